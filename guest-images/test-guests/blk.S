/* blk: drives a virtio-blk device over virtio-mmio from ring 3, by polling
 * (no interrupts: the avail ring carries VIRTQ_AVAIL_F_NO_INTERRUPT). It
 * finds the device as the first "@0x<base>" on its command line (Ember's
 * virtio_mmio.device=4K@0x...:IRQ, or the 512@0x... that QEMU microvm's
 * auto-kernel-cmdline appends), negotiates VIRTIO_F_VERSION_1 only, and sets
 * up queue 0 with 256 entries in its own memory. Request slot s (at most 32
 * in flight) uses descriptors 4s..4s+3: header, data (one or two
 * descriptors), status. Completions may come back in any order. The mode
 * comes from blk=<mode>:
 *
 *   check (default)  read 64 KiB at sector 0; write a pattern of 64 KiB at
 *                    sector 128 (data over two descriptors); read it back
 *                    (two descriptors) and compare; read one sector past the
 *                    end of the disk (expects an I/O error status).
 *   flush            check, then a FLUSH request; prints "BLK flushed" and
 *                    waits forever (the host kills Ember and checks the file).
 *   span             check, but between the write and the read-back prints
 *                    "BLK waiting" and waits for a serial byte (a snapshot
 *                    and restore go there: the read-back then runs in the
 *                    restored VM, on the queue where it was).
 *   early            a read of 64 KiB at sector 0 posted before DRIVER_OK and
 *                    never notified (the device must look at its queue when
 *                    it starts), "BLK early read fnv=<hex>", then check.
 *   perf             seq write, seq read (bs=<bytes>, default and at most
 *                    65536, mib=<n> MiB each, default 64, from sector 0),
 *                    then random 4 KiB reads and writes (ops=<n> each,
 *                    default 8192, 4 KiB aligned over the whole disk), with
 *                    qd=<n> requests in flight (default and at most 32);
 *                    mq=<n> (at most 4): negotiate VIRTIO_BLK_F_MQ and spread the
 *                    requests over n queues (request slot s on queue s mod n),
 *                    as many as the device offers; prints "BLK queues=<n>".
 *   count            ops=<n> (default 8) reads of 4 KiB at sector 0, one at a
 *                    time, each reported as "BLK op <i>" when it completes; no
 *                    timeout (a rate-limited device may hold a request until
 *                    the host changes its limiter).
 *
 * Output (see docs/test-guests-protocol.md):
 *   BLK sectors=<n>
 *   BLK read fnv=<hex>          BLK write fnv=<hex>
 *   BLK readback ok             BLK oob status=<hex>
 *   BLK early read fnv=<hex>       BLK op <i>
 *   PERF <seqwrite|seqread|randread|randwrite> bs=<n> ops=<n> tsc=<ticks>
 */
#include "common/defs.h"

#define QSZ          256
#define Q_AVAIL      4096            /* offsets inside the queue's memory */
#define Q_USED       8192
#define MAX_QD       32
#define MAX_Q        4
#define Q_BYTES      12288           /* one queue: descriptors, avail, used */
#define MAX_BS       65536
#define CHK_BYTES    65536
#define CHK_SECTOR   128
#define DESC_NEXT    1
#define DESC_W       2               /* VIRTQ_DESC_F_WRITE */
#define T_IN         0
#define T_OUT        1
#define T_FLUSH      4
#define TIMEOUT      30000000000     /* TSC ticks to wait for a completion */

/* virtio-mmio registers */
#define R_MAGIC      0x000
#define R_VERSION    0x004
#define R_DEVICE_ID  0x008
#define R_DEV_FEAT   0x010
#define R_DEV_FSEL   0x014
#define R_DRV_FEAT   0x020
#define R_DRV_FSEL   0x024
#define R_QSEL       0x030
#define R_QNUM_MAX   0x034
#define R_QNUM       0x038
#define R_QREADY     0x044
#define R_QNOTIFY    0x050
#define R_STATUS     0x070
#define R_DESC_LO    0x080
#define R_DESC_HI    0x084
#define R_AVAIL_LO   0x090
#define R_AVAIL_HI   0x094
#define R_USED_LO    0x0a0
#define R_USED_HI    0x0a4
#define R_CONFIG     0x100

        .section .rodata
        .globl  guest_name
guest_name:     .asciz  "blk"
k_mode:         .asciz  "blk="
k_bs:           .asciz  "bs="
k_mib:          .asciz  "mib="
k_ops:          .asciz  "ops="
k_qd:           .asciz  "qd="
k_mq:           .asciz  "mq="
s_queues:       .asciz  "BLK queues="
w_perf:         .asciz  "perf"
w_count:        .asciz  "count"
s_op:           .asciz  "BLK op "
w_flush:        .asciz  "flush"
w_span:         .asciz  "span"
s_waiting:      .asciz  "BLK waiting"
w_early:        .asciz  "early"
s_early:        .asciz  "BLK early read fnv="
s_flushed:      .asciz  "BLK flushed"
s_sectors:      .asciz  "BLK sectors="
s_read:         .asciz  "BLK read fnv="
s_write:        .asciz  "BLK write fnv="
s_readback:     .asciz  "BLK readback ok"
s_oob:          .asciz  "BLK oob status="
s_perf:         .asciz  "PERF "
s_bs:           .asciz  " bs="
s_ops:          .asciz  " ops="
s_tsc:          .asciz  " tsc="
n_seqwrite:     .asciz  "seqwrite"
n_seqread:      .asciz  "seqread"
n_randread:     .asciz  "randread"
n_randwrite:    .asciz  "randwrite"
e_nodev:        .asciz  "no-virtio-mmio-device"
e_magic:        .asciz  "bad-magic-or-version"
e_notblk:       .asciz  "not-a-block-device"
e_nov1:         .asciz  "no-version-1"
e_featok:       .asciz  "features-not-ok"
e_qmax:         .asciz  "queue-too-small"
e_needreset:    .asciz  "device-needs-reset"
e_timeout:      .asciz  "used-ring-timeout"
e_status:       .asciz  "request-failed"
e_mismatch:     .asciz  "readback-mismatch"
e_small:        .asciz  "disk-too-small"

        .data
        .p2align 3
dev:            .quad   0               /* register base */
sectors:        .quad   0               /* capacity */
last_used:      .quad   0, 0, 0, 0      /* per queue (MAX_Q) */
nq:             .quad   1               /* queues in use */
kick_mask:      .quad   0               /* queues with requests posted since the last kick */
nfree:          .quad   0
rng:            .quad   0x2545f4914f6cdd1d
/* phase parameters */
flush_mode:     .quad   0               /* blk=flush: flush after check, then wait */
span_mode:      .quad   0               /* blk=span: wait for a serial byte mid-check */
early_mode:     .quad   0               /* blk=early: a request before DRIVER_OK */
ph_type:        .quad   0
ph_rand:        .quad   0
ph_bs:          .quad   0
ph_ops:         .quad   0
qd:             .quad   MAX_QD
timeout:        .quad   TIMEOUT         /* TSC ticks; blk=count: none (all ones) */

        .bss
        .p2align 12
queue:          .skip   MAX_Q * Q_BYTES
hdrs:           .skip   MAX_QD * 16
status:         .skip   MAX_QD
        .p2align 3
freelist:       .skip   MAX_QD * 8
        .p2align 12
bufs:           .skip   MAX_QD * MAX_BS
chk_a:          .skip   CHK_BYTES
chk_b:          .skip   CHK_BYTES

        .text
/* ------------------------------------------------------------ helpers */
/* arg(RDI = key, ESI = default) -> RAX */
arg:
        pushq   %rsi
        call    cmdline_value
        popq    %rcx
        testq   %rax, %rax
        jz      1f
        movq    %rax, %rdi
        jmp     parse_dec
1:      movl    %ecx, %eax
        ret

/* dev_init(): probe, negotiate VERSION_1 (and VIRTIO_BLK_F_MQ when nq > 1 and the device
 * offers it; nq is then capped at its num_queues, else 1), queues 0..nq-1, DRIVER_OK,
 * capacity. */
dev_init:
        pushq   %rbx
        pushq   %r12
        movq    dev(%rip), %rbx
        cmpl    $0x74726976, R_MAGIC(%rbx)
        jne     f_magic
        cmpl    $2, R_VERSION(%rbx)
        jne     f_magic
        cmpl    $2, R_DEVICE_ID(%rbx)
        jne     f_notblk
        movl    $0, R_STATUS(%rbx)
        movl    $1, R_STATUS(%rbx)
        movl    $3, R_STATUS(%rbx)
        movl    $1, R_DEV_FSEL(%rbx)
        testl   $1, R_DEV_FEAT(%rbx)            /* VERSION_1 = bit 32 */
        jz      f_nov1
        xorl    %r12d, %r12d                    /* driver features, word 0 */
        cmpq    $1, nq(%rip)
        jbe     3f
        movl    $0, R_DEV_FSEL(%rbx)
        testl   $0x1000, R_DEV_FEAT(%rbx)       /* VIRTIO_BLK_F_MQ = bit 12 */
        jz      4f
        movl    $0x1000, %r12d
        jmp     3f
4:      movq    $1, nq(%rip)
3:      movl    $0, R_DRV_FSEL(%rbx)
        movl    %r12d, R_DRV_FEAT(%rbx)
        movl    $1, R_DRV_FSEL(%rbx)
        movl    $1, R_DRV_FEAT(%rbx)
        movl    $0xb, R_STATUS(%rbx)
        testl   $8, R_STATUS(%rbx)
        jz      f_featok
        testl   %r12d, %r12d
        jz      5f
        movzwl  R_CONFIG + 34(%rbx), %eax       /* num_queues */
        testl   %eax, %eax
        jz      f_qmax
        cmpq    %rax, nq(%rip)
        jbe     5f
        movq    %rax, nq(%rip)
5:      xorl    %r12d, %r12d                    /* queue index */
6:      movl    %r12d, R_QSEL(%rbx)
        cmpl    $QSZ, R_QNUM_MAX(%rbx)
        jb      f_qmax
        movl    $QSZ, R_QNUM(%rbx)
        imull   $Q_BYTES, %r12d, %eax
        leaq    queue(%rip), %rcx
        addq    %rcx, %rax
        movl    %eax, R_DESC_LO(%rbx)
        movl    $0, R_DESC_HI(%rbx)
        leal    Q_AVAIL(%rax), %ecx
        movl    %ecx, R_AVAIL_LO(%rbx)
        movl    $0, R_AVAIL_HI(%rbx)
        leal    Q_USED(%rax), %ecx
        movl    %ecx, R_USED_LO(%rbx)
        movl    $0, R_USED_HI(%rbx)
        movw    $1, Q_AVAIL(%rax)               /* VIRTQ_AVAIL_F_NO_INTERRUPT */
        movl    $1, R_QREADY(%rbx)
        incl    %r12d
        cmpq    nq(%rip), %r12
        jb      6b
        cmpq    $0, early_mode(%rip)
        je      2f
        /* blk=early: read 64 KiB at sector 0, posted now and never notified */
        xorl    %edi, %edi
        movl    $T_IN, %esi
        xorl    %edx, %edx
        leaq    chk_a(%rip), %rcx
        movl    $CHK_BYTES, %r8d
        xorl    %r9d, %r9d
        call    post
2:      movl    $0xf, R_STATUS(%rbx)
        testl   $0x40, R_STATUS(%rbx)           /* DEVICE_NEEDS_RESET */
        jnz     f_needreset
        movl    R_CONFIG(%rbx), %eax            /* capacity, two 32-bit reads */
        movl    R_CONFIG + 4(%rbx), %ecx
        shlq    $32, %rcx
        orq     %rcx, %rax
        movq    %rax, sectors(%rip)
        /* every slot free */
        leaq    freelist(%rip), %rdx
        xorl    %ecx, %ecx
1:      movq    %rcx, (%rdx,%rcx,8)
        incl    %ecx
        cmpl    $MAX_QD, %ecx
        jb      1b
        movq    $MAX_QD, nfree(%rip)
        popq    %r12
        popq    %rbx
        ret
f_magic:        leaq    e_magic(%rip), %rdi
                jmp     test_fail
f_notblk:       leaq    e_notblk(%rip), %rdi
                jmp     test_fail
f_nov1:         leaq    e_nov1(%rip), %rdi
                jmp     test_fail
f_featok:       leaq    e_featok(%rip), %rdi
                jmp     test_fail
f_qmax:         leaq    e_qmax(%rip), %rdi
                jmp     test_fail
f_needreset:    leaq    e_needreset(%rip), %rdi
                jmp     test_fail

/* post(EDI = slot, ESI = type, RDX = sector, RCX = data, R8D = len,
 * R9D = 1 to split the data over two descriptors): fills the slot's header,
 * status (0xff until the device writes it) and descriptors, and publishes the
 * head in the avail ring. The device is not notified. */
post:
        pushq   %rbx
        pushq   %r12
        leaq    hdrs(%rip), %rax
        movl    %edi, %r10d
        shll    $4, %r10d
        addq    %rax, %r10                      /* header */
        movl    %esi, (%r10)
        movl    $0, 4(%r10)
        movq    %rdx, 8(%r10)
        leaq    status(%rip), %r11
        addq    %rdi, %r11                      /* status byte */
        movb    $0xff, (%r11)
        movl    %edi, %eax
        xorl    %edx, %edx
        divl    nq(%rip)                        /* EDX = slot mod nq: its queue */
        btsq    %rdx, kick_mask(%rip)
        imull   $Q_BYTES, %edx, %ebx
        leaq    queue(%rip), %rax
        addq    %rax, %rbx                      /* the queue's memory */
        movl    %edi, %r12d
        shll    $2, %r12d                       /* head descriptor */
        movl    %r12d, %eax
        shll    $4, %eax
        addq    %rbx, %rax                      /* &desc[head] */
        xorl    %edx, %edx                      /* data flags */
        cmpl    $T_IN, %esi
        jne     1f
        movl    $DESC_W, %edx
1:      orl     $DESC_NEXT, %edx
        /* header */
        movq    %r10, (%rax)
        movl    $16, 8(%rax)
        movw    $DESC_NEXT, 12(%rax)
        leal    1(%r12), %esi
        movw    %si, 14(%rax)
        addq    $16, %rax
        testl   %r9d, %r9d
        jz      2f
        /* data, first half */
        shrl    $1, %r8d
        movq    %rcx, (%rax)
        movl    %r8d, 8(%rax)
        movw    %dx, 12(%rax)
        incl    %esi
        movw    %si, 14(%rax)
        addq    $16, %rax
        addq    %r8, %rcx
2:      movq    %rcx, (%rax)                    /* data (second half) */
        movl    %r8d, 8(%rax)
        movw    %dx, 12(%rax)
        incl    %esi
        movw    %si, 14(%rax)
        addq    $16, %rax
        movq    %r11, (%rax)                    /* status */
        movl    $1, 8(%rax)
        movw    $DESC_W, 12(%rax)
        movw    $0, 14(%rax)
        /* avail ring */
        movzwl  Q_AVAIL + 2(%rbx), %ecx
        movl    %ecx, %eax
        andl    $QSZ - 1, %eax
        movw    %r12w, Q_AVAIL + 4(%rbx,%rax,2)
        incl    %ecx
        movw    %cx, Q_AVAIL + 2(%rbx)          /* x86 keeps store order */
        popq    %r12
        popq    %rbx
        ret

/* kick(): notifies each queue that got requests since the last kick, unless the
 * device asked not to be notified on it. Clobbers RAX, RCX, RDX. */
kick:
        mfence                                  /* avail idx before used flags */
        pushq   %rbx
        movq    kick_mask(%rip), %rbx
        movq    $0, kick_mask(%rip)
        xorl    %ecx, %ecx
1:      btq     %rcx, %rbx
        jnc     2f
        imull   $Q_BYTES, %ecx, %eax
        leaq    queue(%rip), %rdx
        addq    %rdx, %rax
        testw   $1, Q_USED(%rax)                /* VIRTQ_USED_F_NO_NOTIFY */
        jnz     2f
        movq    dev(%rip), %rax
        movl    %ecx, R_QNOTIFY(%rax)
2:      incl    %ecx
        cmpq    nq(%rip), %rcx
        jb      1b
        popq    %rbx
        ret

/* harvest() -> EAX = completions taken from every queue in use: each completed
 * slot goes back to the free list; a status other than OK fails the test. */
harvest:
        pushq   %rbx
        pushq   %r12
        pushq   %r14
        xorl    %r12d, %r12d                    /* completions */
        xorl    %r14d, %r14d                    /* queue */
1:      imull   $Q_BYTES, %r14d, %ebx
        leaq    queue(%rip), %rax
        addq    %rax, %rbx
        leaq    last_used(%rip), %r8
        leaq    (%r8,%r14,8), %r8               /* &last_used[queue] */
3:      movzwl  (%r8), %eax
        cmpw    %ax, Q_USED + 2(%rbx)
        je      8f
        andl    $QSZ - 1, %eax
        movl    Q_USED + 4(%rbx,%rax,8), %ecx   /* id = head descriptor */
        shrl    $2, %ecx                        /* slot */
        leaq    status(%rip), %rdx
        cmpb    $0, (%rdx,%rcx)
        je      4f
        leaq    e_status(%rip), %rdi
        jmp     test_fail
4:      movq    nfree(%rip), %rax
        leaq    freelist(%rip), %rdx
        movq    %rcx, (%rdx,%rax,8)
        incq    nfree(%rip)
        incq    (%r8)
        incl    %r12d
        jmp     3b
8:      incl    %r14d
        cmpq    nq(%rip), %r14
        jb      1b
        movl    %r12d, %eax
        popq    %r14
        popq    %r12
        popq    %rbx
        ret

/* reap() -> EAX = completions taken (at least one; fails after the timeout). */
reap:
        pushq   %r13
        call    harvest
        testl   %eax, %eax
        jnz     9f
        call    rdtsc64
        movq    %rax, %r13
1:      pause
        call    harvest
        testl   %eax, %eax
        jnz     9f
        call    rdtsc64
        subq    %r13, %rax
        cmpq    timeout(%rip), %rax
        jb      1b
        leaq    e_timeout(%rip), %rdi
        jmp     test_fail
9:      popq    %r13
        ret

/* io_sync(ESI = type, RDX = sector, RCX = data, R8D = len, R9D = split)
 * -> EAX = status byte: one request in slot 0, waited for. Any status is
 * returned (the caller checks it). */
io_sync:
        xorl    %edi, %edi
        call    post
        call    kick
/* wait_sync() -> EAX = status byte of slot 0: waits for the next completion
 * (fails after TIMEOUT). */
wait_sync:
        pushq   %rax
        leaq    queue(%rip), %rcx
        movzwl  last_used(%rip), %eax
        incl    %eax
        pushq   %rax
        call    rdtsc64
        movq    %rax, %r10
1:      movzwl  Q_USED + 2(%rcx), %eax
        cmpw    (%rsp), %ax
        je      2f
        pause
        pushq   %rcx
        pushq   %r10
        call    rdtsc64
        popq    %r10
        popq    %rcx
        subq    %r10, %rax
        cmpq    timeout(%rip), %rax
        jb      1b
        leaq    e_timeout(%rip), %rdi
        jmp     test_fail
2:      popq    %rax
        incq    last_used(%rip)
        movzbl  status(%rip), %eax
        popq    %rcx
        ret

/* put_fnv(RDI = label, RSI = CHK_BYTES buffer): prints "<label><fnv1a64>". */
put_fnv:
        pushq   %rsi
        call    puts
        popq    %rdi
        movl    $CHK_BYTES, %esi
        call    fnv1a64
        movq    %rax, %rdi
        call    put_hex
        jmp     put_nl

/* xorshift64() -> RAX */
xorshift64:
        movq    rng(%rip), %rax
        movq    %rax, %rcx
        shlq    $13, %rcx
        xorq    %rcx, %rax
        movq    %rax, %rcx
        shrq    $7, %rcx
        xorq    %rcx, %rax
        movq    %rax, %rcx
        shlq    $17, %rcx
        xorq    %rcx, %rax
        movq    %rax, rng(%rip)
        ret

/* phase(RDI = name): ph_ops requests of ph_bs bytes of type ph_type,
 * sequential from sector 0 or (ph_rand) 4 KiB-aligned random, with up to
 * qd in flight; prints "PERF <name> bs=<n> ops=<n> tsc=<ticks>". */
phase:
        pushq   %rbx
        pushq   %r12
        pushq   %r13
        pushq   %r14
        pushq   %r15
        movq    %rdi, %r15
        /* only qd slots in the free list */
        movq    qd(%rip), %rax
        movq    %rax, nfree(%rip)
        call    rdtsc64
        movq    %rax, %r14                      /* start */
        xorl    %ebx, %ebx                      /* submitted */
        xorl    %r12d, %r12d                    /* completed */
1:      cmpq    ph_ops(%rip), %r12
        jae     8f
        xorl    %r13d, %r13d                    /* posted this round */
2:      cmpq    ph_ops(%rip), %rbx
        jae     5f
        cmpq    $0, nfree(%rip)
        je      5f
        decq    nfree(%rip)
        movq    nfree(%rip), %rax
        leaq    freelist(%rip), %rdx
        movq    (%rdx,%rax,8), %rdi             /* slot */
        pushq   %rdi
        pushq   %rdi
        cmpq    $0, ph_rand(%rip)
        jne     3f
        movq    ph_bs(%rip), %rax               /* sequential */
        shrq    $9, %rax
        imulq   %rbx, %rax
        movq    %rax, %rdx
        jmp     4f
3:      call    xorshift64                      /* random 4 KiB block */
        movq    sectors(%rip), %rcx
        shrq    $3, %rcx
        xorl    %edx, %edx
        divq    %rcx
        shlq    $3, %rdx
4:      popq    %rdi
        popq    %rdi
        movl    %edi, %ecx
        shll    $16, %ecx                       /* slot * MAX_BS */
        leaq    bufs(%rip), %rax
        addq    %rax, %rcx
        movl    ph_type(%rip), %esi
        movl    ph_bs(%rip), %r8d
        xorl    %r9d, %r9d
        call    post
        incq    %rbx
        incl    %r13d
        jmp     2b
5:      testl   %r13d, %r13d
        jz      6f
        call    kick
6:      call    reap
        addq    %rax, %r12
        jmp     1b
8:      call    rdtsc64
        subq    %r14, %rax
        movq    %rax, %r14
        leaq    s_perf(%rip), %rdi
        call    puts
        movq    %r15, %rdi
        call    puts
        leaq    s_bs(%rip), %rdi
        call    puts
        movq    ph_bs(%rip), %rdi
        call    put_dec
        leaq    s_ops(%rip), %rdi
        call    puts
        movq    ph_ops(%rip), %rdi
        call    put_dec
        leaq    s_tsc(%rip), %rdi
        call    puts
        movq    %r14, %rdi
        call    put_dec
        call    put_nl
        /* all slots back in the list for the next phase */
        leaq    freelist(%rip), %rdx
        xorl    %ecx, %ecx
9:      movq    %rcx, (%rdx,%rcx,8)
        incl    %ecx
        cmpl    $MAX_QD, %ecx
        jb      9b
        movq    $MAX_QD, nfree(%rip)
        popq    %r15
        popq    %r14
        popq    %r13
        popq    %r12
        popq    %rbx
        ret

/* -------------------------------------------------------------- main */
        .globl  guest_main
guest_main:
        pushq   %rbx
        pushq   %r12
        pushq   %r13
        pushq   %r14
        pushq   %r15
        xorl    %edi, %edi
        call    virtio_mmio_base
        testq   %rax, %rax
        jnz     1f
        leaq    e_nodev(%rip), %rdi
        jmp     test_fail
1:      movq    %rax, dev(%rip)
        leaq    k_mode(%rip), %rdi
        call    cmdline_value
        testq   %rax, %rax
        jz      2f
        movq    %rax, %rdi
        leaq    w_early(%rip), %rsi
        call    token_eq
        movl    %eax, %eax
        movq    %rax, early_mode(%rip)
2:      leaq    k_mq(%rip), %rdi                /* mq=<n>: queues wanted */
        movl    $1, %esi
        call    arg
        testq   %rax, %rax
        jnz     7f
        movl    $1, %eax
7:      cmpq    $MAX_Q, %rax
        jbe     8f
        movl    $MAX_Q, %eax
8:      movq    %rax, nq(%rip)
        call    dev_init
        leaq    s_sectors(%rip), %rdi
        call    puts
        movq    sectors(%rip), %rdi
        call    put_dec
        call    put_nl
        leaq    k_mq(%rip), %rdi                /* asked for queues: say how many */
        call    cmdline_value
        testq   %rax, %rax
        jz      1f
        leaq    s_queues(%rip), %rdi
        call    puts
        movq    nq(%rip), %rdi
        call    put_dec
        call    put_nl
1:
        leaq    k_mode(%rip), %rdi
        call    cmdline_value
        testq   %rax, %rax
        jz      check
        movq    %rax, %rdi
        movq    %rax, %r12
        leaq    w_perf(%rip), %rsi
        call    token_eq
        testl   %eax, %eax
        jnz     perf
        movq    %r12, %rdi
        leaq    w_count(%rip), %rsi
        call    token_eq
        testl   %eax, %eax
        jnz     count
        movq    %r12, %rdi
        leaq    w_flush(%rip), %rsi
        call    token_eq
        movl    %eax, %eax
        movq    %rax, flush_mode(%rip)
        movq    %r12, %rdi
        leaq    w_span(%rip), %rsi
        call    token_eq
        movl    %eax, %eax
        movq    %rax, span_mode(%rip)
        cmpq    $0, early_mode(%rip)
        je      check
        /* blk=early: the request posted before DRIVER_OK completes unprompted */
        call    wait_sync
        testl   %eax, %eax
        jnz     f_status
        leaq    s_early(%rip), %rdi
        leaq    chk_a(%rip), %rsi
        call    put_fnv

check:
        cmpq    $2 * CHK_SECTOR, sectors(%rip)
        jb      f_small
        /* read 64 KiB at sector 0 */
        movl    $T_IN, %esi
        xorl    %edx, %edx
        leaq    chk_a(%rip), %rcx
        movl    $CHK_BYTES, %r8d
        xorl    %r9d, %r9d
        call    io_sync
        testl   %eax, %eax
        jnz     f_status
        leaq    s_read(%rip), %rdi
        leaq    chk_a(%rip), %rsi
        call    put_fnv
        /* pattern: 64-bit word i = (i + 1) * golden ratio */
        leaq    chk_b(%rip), %rdi
        xorl    %ecx, %ecx
        movabsq $0x9e3779b97f4a7c15, %rdx
        xorl    %eax, %eax
2:      addq    %rdx, %rax
        movq    %rax, (%rdi,%rcx,8)
        incl    %ecx
        cmpl    $CHK_BYTES / 8, %ecx
        jb      2b
        /* write it at sector 128, data over two descriptors */
        movl    $T_OUT, %esi
        movl    $CHK_SECTOR, %edx
        leaq    chk_b(%rip), %rcx
        movl    $CHK_BYTES, %r8d
        movl    $1, %r9d
        call    io_sync
        testl   %eax, %eax
        jnz     f_status
        leaq    s_write(%rip), %rdi
        leaq    chk_b(%rip), %rsi
        call    put_fnv
        cmpq    $0, span_mode(%rip)
        je      3f
        leaq    s_waiting(%rip), %rdi
        call    put_line
4:      call    getc_poll
        cmpl    $-1, %eax
        jne     3f
        movl    $20000, %edi
        call    delay_ticks
        jmp     4b
3:
        /* read it back over two descriptors and compare */
        leaq    chk_a(%rip), %rdi
        movl    $CHK_BYTES / 8, %ecx
        xorl    %eax, %eax
        rep stosq
        movl    $T_IN, %esi
        movl    $CHK_SECTOR, %edx
        leaq    chk_a(%rip), %rcx
        movl    $CHK_BYTES, %r8d
        movl    $1, %r9d
        call    io_sync
        testl   %eax, %eax
        jnz     f_status
        leaq    chk_a(%rip), %rsi
        leaq    chk_b(%rip), %rdi
        movl    $CHK_BYTES / 8, %ecx
        repe cmpsq
        jne     f_mismatch
        leaq    s_readback(%rip), %rdi
        call    put_line
        /* one sector past the end: an I/O error, not a crash */
        movl    $T_IN, %esi
        movq    sectors(%rip), %rdx
        leaq    chk_a(%rip), %rcx
        movl    $512, %r8d
        xorl    %r9d, %r9d
        call    io_sync
        movl    %eax, %ebx
        leaq    s_oob(%rip), %rdi
        call    puts
        movl    %ebx, %edi
        call    put_hex
        call    put_nl
        cmpq    $0, flush_mode(%rip)
        je      out
        /* blk=flush: FLUSH (no data), report, then wait to be killed by the host */
        movl    $T_FLUSH, %esi
        xorl    %edx, %edx
        leaq    chk_a(%rip), %rcx
        xorl    %r8d, %r8d
        xorl    %r9d, %r9d
        call    io_sync
        testl   %eax, %eax
        jnz     f_status
        leaq    s_flushed(%rip), %rdi
        call    put_line
9:      pause
        jmp     9b

count:
        movq    $-1, timeout(%rip)
        leaq    k_ops(%rip), %rdi
        movl    $8, %esi
        call    arg
        movq    %rax, %r13                      /* requests */
        xorl    %r14d, %r14d                    /* completed */
1:      cmpq    %r13, %r14
        jae     out
        movl    $T_IN, %esi
        xorl    %edx, %edx
        leaq    chk_a(%rip), %rcx
        movl    $4096, %r8d
        xorl    %r9d, %r9d
        call    io_sync
        testl   %eax, %eax
        jnz     f_status
        incq    %r14
        leaq    s_op(%rip), %rdi
        call    puts
        movq    %r14, %rdi
        call    put_dec
        call    put_nl
        jmp     1b

perf:
        leaq    k_bs(%rip), %rdi
        movl    $MAX_BS, %esi
        call    arg
        andq    $-512, %rax
        jz      f_small
        cmpq    $MAX_BS, %rax
        jbe     1f
        movl    $MAX_BS, %eax
1:      movq    %rax, %r12                      /* bs */
        leaq    k_qd(%rip), %rdi
        movl    $MAX_QD, %esi
        call    arg
        testq   %rax, %rax
        jz      2f
        cmpq    $MAX_QD, %rax
        jbe     3f
2:      movl    $MAX_QD, %eax
3:      movq    %rax, qd(%rip)
        leaq    k_mib(%rip), %rdi
        movl    $64, %esi
        call    arg
        shlq    $20, %rax
        movq    %rax, %r13                      /* bytes per seq phase */
        movq    %rax, %rcx
        shrq    $9, %rcx
        cmpq    sectors(%rip), %rcx
        ja      f_small
        cmpq    $8, sectors(%rip)
        jb      f_small
        leaq    k_ops(%rip), %rdi
        movl    $8192, %esi
        call    arg
        movq    %rax, %r14                      /* random ops */
        xorl    %edx, %edx
        movq    %r13, %rax
        divq    %r12
        movq    %rax, %r15                      /* seq ops */

        movq    $T_OUT, ph_type(%rip)
        movq    $0, ph_rand(%rip)
        movq    %r12, ph_bs(%rip)
        movq    %r15, ph_ops(%rip)
        leaq    n_seqwrite(%rip), %rdi
        call    phase
        movq    $T_IN, ph_type(%rip)
        leaq    n_seqread(%rip), %rdi
        call    phase
        movq    $1, ph_rand(%rip)
        movq    $4096, ph_bs(%rip)
        movq    %r14, ph_ops(%rip)
        leaq    n_randread(%rip), %rdi
        call    phase
        movq    $T_OUT, ph_type(%rip)
        leaq    n_randwrite(%rip), %rdi
        call    phase

out:
        popq    %r15
        popq    %r14
        popq    %r13
        popq    %r12
        popq    %rbx
        ret

f_status:       leaq    e_status(%rip), %rdi
                jmp     test_fail
f_mismatch:     leaq    e_mismatch(%rip), %rdi
                jmp     test_fail
f_small:        leaq    e_small(%rip), %rdi
                jmp     test_fail
