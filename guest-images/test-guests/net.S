/* net: drives Ember's virtio-net devices over virtio-mmio from ring 3, with
 * polling only (no interrupts). It finds the devices on its command line
 * (virtio_mmio.device=4K@0x...:IRQ, as Ember announces them), negotiates
 * VIRTIO_F_VERSION_1 only, and sets up RX (queue 0) and TX (queue 1) with 256
 * entries each in its own memory. The mode comes from net=<mode>:
 *
 *   basic (default)  one NIC: TX of a frame split over three descriptors; RX
 *                    of a frame that arrived before any buffer was posted
 *                    (waits for a serial line first); RX with buffers
 *                    posted; malformed TX chains (shorter than the header,
 *                    outside guest memory, larger than 64 KiB) followed by a
 *                    good frame; malformed RX chains (read-only, outside guest
 *                    memory) followed by a good one.
 *   two              two NICs: one frame out of and one frame into each.
 *   perf             count=<n> size=<bytes>: n TX frames of size bytes
 *                    (header included), then n RX frames; for throughput.
 *
 * Output lines (see docs/test-guests-protocol.md):
 *   NET dev=<i> mac=<aa:bb:..> link=<n>
 *   TX split used=<n>               RX len=<hex> fnv=<hex>
 *   RX nobuf ready / RX posted ready / RX malformed ready / RX two ready
 *   TX malformed used=<n>           RX malformed lens=<hex> <hex>
 *   TX dev=<i> ok                   RX dev=<i> len=<hex> fnv=<hex>
 *   PERF tx start / PERF tx done frames=<n> / PERF rx ready / PERF rx done frames=<n>
 */
#include "common/defs.h"

#define QSZ          256
#define Q_AVAIL      4096            /* offsets inside one queue's memory */
#define Q_USED       8192
#define Q_BYTES      12288
#define DEV_BYTES    (2 * Q_BYTES)   /* RX queue, then TX queue */
#define MAX_DEVS     2
#define BUF_SIZE     2048
#define DESC_W       2               /* VIRTQ_DESC_F_WRITE */
#define DESC_NEXT    1
#define OUTSIDE      0x4000000000    /* 256 GiB: no guest RAM there */
#define BIG_ADDR     0x400000        /* guest RAM, for the oversized chain */
#define TIMEOUT      30000000000     /* TSC ticks to wait for a used entry */
#define PERF_WINDOW  64              /* perf: frames in flight */

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
guest_name:     .asciz  "net"
k_dev:          .asciz  "@0x"
k_mode:         .asciz  "net="
k_count:        .asciz  "count="
k_size:         .asciz  "size="
w_two:          .asciz  "two"
w_perf:         .asciz  "perf"
s_net:          .asciz  "NET dev="
s_mac:          .asciz  " mac="
s_link:         .asciz  " link="
s_tx_split:     .asciz  "TX split used="
s_rx_len:       .asciz  "RX len="
s_fnv:          .asciz  " fnv="
s_nobuf:        .asciz  "RX nobuf ready"
s_posted:       .asciz  "RX posted ready"
s_txbad:        .asciz  "TX malformed used="
s_rxbad_ready:  .asciz  "RX malformed ready"
s_rxbad:        .asciz  "RX malformed lens="
s_tx_dev:       .asciz  "TX dev="
s_ok:           .asciz  " ok"
s_rx_dev:       .asciz  "RX dev="
s_len:          .asciz  " len="
s_two_ready:    .asciz  "RX two ready"
s_ptx_start:    .asciz  "PERF tx start"
s_ptx_done:     .asciz  "PERF tx done frames="
s_prx_ready:    .asciz  "PERF rx ready"
s_prx_done:     .asciz  "PERF rx done frames="
e_nodev:        .asciz  "no-virtio-mmio-device"
e_magic:        .asciz  "bad-magic-or-version"
e_notnet:       .asciz  "not-a-net-device"
e_nov1:         .asciz  "no-version-1"
e_featok:       .asciz  "features-not-ok"
e_qmax:         .asciz  "queue-too-small"
e_needreset:    .asciz  "device-needs-reset"
e_timeout:      .asciz  "used-ring-timeout"
e_twodevs:      .asciz  "need-two-devices"

        .data
        .p2align 4
/* TX frame for the split test: 12-byte header, then Ethernet. The source
 * MAC is filled in from config space. */
frame_a:
        .fill   12, 1, 0
        .byte   0xff, 0xff, 0xff, 0xff, 0xff, 0xff
frame_a_src:
        .fill   6, 1, 0
        .byte   0x88, 0xb5
        .ascii  "EMBER-NET-TX-SPLIT"
        .set    i, 0
        .rept   28
        .byte   i
        .set    i, i + 1
        .endr
frame_a_end:
/* TX frame after the malformed chains. */
frame_d:
        .fill   12, 1, 0
        .byte   0xff, 0xff, 0xff, 0xff, 0xff, 0xff
frame_d_src:
        .fill   6, 1, 0
        .byte   0x88, 0xb5
        .ascii  "EMBER-NET-TX-AFTER"
        .fill   28, 1, 0x5a
frame_d_end:
/* TX frame of the two-NIC test; byte 'n' becomes the device digit. */
frame_t:
        .fill   12, 1, 0
        .byte   0xff, 0xff, 0xff, 0xff, 0xff, 0xff
frame_t_src:
        .fill   6, 1, 0
        .byte   0x88, 0xb5
        .ascii  "EMBER-NET-TWO-"
frame_t_dev:
        .ascii  "n"
        .fill   31, 1, 0x33
frame_t_end:

        .p2align 3
ndevs:          .quad   0
dev_base:       .fill   MAX_DEVS, 8, 0
perf_count:     .quad   0
perf_size:      .quad   0
/* segment list for q_post: {addr u64, len u32, flags u32} */
segs:           .fill   4 * 16, 1, 0

        .bss
        .p2align 12
queues:         .skip   MAX_DEVS * DEV_BYTES
rxbufs:         .skip   PERF_WINDOW * BUF_SIZE
perfbuf:        .skip   65536 + 64

        .text
/* ------------------------------------------------------------ helpers */
/* seg(EDI = index, RSI = addr, EDX = len, ECX = flags) */
seg:
        movl    %edi, %eax
        shll    $4, %eax
        leaq    segs(%rip), %r8
        movq    %rsi, (%r8,%rax)
        movl    %edx, 8(%r8,%rax)
        movl    %ecx, 12(%r8,%rax)
        ret

/* qmem(EDI = dev, ESI = queue) -> RAX = that queue's memory */
qmem:
        imull   $DEV_BYTES, %edi, %eax
        imull   $Q_BYTES, %esi, %ecx
        addl    %ecx, %eax
        leaq    queues(%rip), %rcx
        addq    %rcx, %rax
        ret

/* q_post(RDI = queue memory, ESI = segment count): one chain from segs[],
 * descriptors (avail_idx % 64) * 4 onwards, published in the avail ring. */
q_post:
        movzwl  Q_AVAIL + 2(%rdi), %r9d         /* avail idx */
        movl    %r9d, %r10d
        andl    $63, %r10d
        shll    $2, %r10d                       /* first descriptor */
        leaq    segs(%rip), %r8
        xorl    %ecx, %ecx
1:      leal    (%r10,%rcx), %eax
        shll    $4, %eax                        /* desc offset */
        movq    (%r8), %rdx
        movq    %rdx, (%rdi,%rax)               /* addr */
        movl    8(%r8), %edx
        movl    %edx, 8(%rdi,%rax)              /* len */
        movl    12(%r8), %edx                   /* flags */
        leal    1(%rcx), %r11d
        cmpl    %esi, %r11d
        jae     2f
        orl     $DESC_NEXT, %edx
2:      movw    %dx, 12(%rdi,%rax)
        leal    1(%r10,%rcx), %edx
        movw    %dx, 14(%rdi,%rax)              /* next */
        addq    $16, %r8
        incl    %ecx
        cmpl    %esi, %ecx
        jb      1b
        movl    %r9d, %eax
        andl    $QSZ - 1, %eax
        movw    %r10w, Q_AVAIL + 4(%rdi,%rax,2) /* ring[idx % QSZ] = head */
        incl    %r9d
        movw    %r9w, Q_AVAIL + 2(%rdi)         /* x86 keeps store order */
        ret

/* notify(EDI = dev, ESI = queue) */
notify:
        leaq    dev_base(%rip), %rax
        movq    (%rax,%rdi,8), %rax
        movl    %esi, R_QNOTIFY(%rax)
        ret

/* q_wait(RDI = queue memory, ESI = used index to reach) -> EAX 1, or 0 on
 * time-out. */
q_wait:
        pushq   %rbx
        pushq   %r12
        pushq   %r13
        movq    %rdi, %rbx
        movl    %esi, %r12d
        call    rdtsc64
        movq    %rax, %r13
1:      movzwl  Q_USED + 2(%rbx), %eax
        subw    %r12w, %ax
        testw   %ax, %ax
        jns     8f                              /* used idx - target >= 0 */
        pause
        call    rdtsc64
        subq    %r13, %rax
        movabsq $TIMEOUT, %rcx
        cmpq    %rcx, %rax
        jb      1b
        xorl    %eax, %eax
        jmp     9f
8:      movl    $1, %eax
9:      popq    %r13
        popq    %r12
        popq    %rbx
        ret

/* wait_or_fail(RDI = queue memory, ESI = used index) */
wait_or_fail:
        call    q_wait
        testl   %eax, %eax
        jz      1f
        ret
1:      leaq    e_timeout(%rip), %rdi
        jmp     test_fail

/* used_len(RDI = queue memory, ESI = used slot) -> EAX = len, EDX = id */
used_len:
        andl    $QSZ - 1, %esi
        movl    Q_USED + 4(%rdi,%rsi,8), %edx
        movl    Q_USED + 8(%rdi,%rsi,8), %eax
        ret

/* print_rx(RDI = queue memory, ESI = used slot): "RX len=<frame> fnv=<hash>"
 * of the frame after the 12-byte header, found through the head descriptor. */
print_rx:
        pushq   %rbx
        pushq   %r12
        pushq   %r13
        movq    %rdi, %rbx
        call    used_len
        leal    -12(%rax), %r12d                /* frame length */
        shll    $4, %edx
        movq    (%rbx,%rdx), %r13               /* buffer address */
        addq    $12, %r13
        leaq    s_rx_len(%rip), %rdi
        call    puts
        movl    %r12d, %edi
        call    put_hex
        leaq    s_fnv(%rip), %rdi
        call    puts
        movq    %r13, %rdi
        movl    %r12d, %esi
        call    fnv1a64
        movq    %rax, %rdi
        call    put_hex
        call    put_nl
        popq    %r13
        popq    %r12
        popq    %rbx
        ret

/* wait_line(): read COM1 until '\n' (the host's go-ahead). */
wait_line:
1:      call    getc_poll
        cmpl    $'\n', %eax
        je      2f
        cmpl    $-1, %eax
        jne     1b
        movl    $20000, %edi
        call    delay_ticks
        jmp     1b
2:      ret

/* parse_hex(RDI = string) -> RAX */
parse_hex:
        xorl    %eax, %eax
1:      movzbl  (%rdi), %ecx
        leal    -'0'(%rcx), %edx
        cmpl    $9, %edx
        jbe     2f
        orl     $0x20, %ecx
        leal    -'a'(%rcx), %edx
        cmpl    $5, %edx
        ja      3f
        addl    $10, %edx
2:      shlq    $4, %rax
        addq    %rdx, %rax
        incq    %rdi
        jmp     1b
3:      ret

/* find_devices(): every "@0x<hex>" on the command line is a device. */
find_devices:
        pushq   %rbx
        movq    cmdline_ptr(%rip), %rbx
        testq   %rbx, %rbx
        jz      9f
1:      movzbl  (%rbx), %eax
        testl   %eax, %eax
        jz      9f
        cmpb    $'@', %al
        jne     2f
        cmpb    $'0', 1(%rbx)
        jne     2f
        cmpb    $'x', 2(%rbx)
        jne     2f
        leaq    3(%rbx), %rdi
        call    parse_hex
        movq    ndevs(%rip), %rcx
        cmpq    $MAX_DEVS, %rcx
        jae     9f
        leaq    dev_base(%rip), %rdx
        movq    %rax, (%rdx,%rcx,8)
        incq    ndevs(%rip)
2:      incq    %rbx
        jmp     1b
9:      popq    %rbx
        ret

/* put_byte2(DIL): two hex digits */
put_byte2:
        pushq   %rbx
        movzbl  %dil, %ebx
        movl    %ebx, %edi
        shrl    $4, %edi
        call    put_nibble
        movl    %ebx, %edi
        andl    $15, %edi
        call    put_nibble
        popq    %rbx
        ret
put_nibble:
        addl    $'0', %edi
        cmpl    $'9', %edi
        jbe     1f
        addl    $'a' - '0' - 10, %edi
1:      jmp     putc

/* dev_init(EDI = dev): probe, negotiate VERSION_1, queues, DRIVER_OK,
 * print "NET dev=<i> mac=<mac> link=<status>", copy the MAC into the
 * frames' source fields. */
dev_init:
        pushq   %rbx
        pushq   %r12
        pushq   %r13
        movl    %edi, %r12d
        leaq    dev_base(%rip), %rax
        movq    (%rax,%rdi,8), %rbx
        cmpl    $0x74726976, R_MAGIC(%rbx)
        jne     f_magic
        cmpl    $2, R_VERSION(%rbx)
        jne     f_magic
        cmpl    $1, R_DEVICE_ID(%rbx)
        jne     f_notnet
        movl    $0, R_STATUS(%rbx)
        movl    $1, R_STATUS(%rbx)
        movl    $3, R_STATUS(%rbx)
        movl    $1, R_DEV_FSEL(%rbx)
        testl   $1, R_DEV_FEAT(%rbx)            /* VERSION_1 = bit 32 */
        jz      f_nov1
        movl    $0, R_DRV_FSEL(%rbx)
        movl    $0, R_DRV_FEAT(%rbx)
        movl    $1, R_DRV_FSEL(%rbx)
        movl    $1, R_DRV_FEAT(%rbx)
        movl    $0xb, R_STATUS(%rbx)
        testl   $8, R_STATUS(%rbx)
        jz      f_featok
        xorl    %r13d, %r13d                    /* queue */
1:      movl    %r13d, R_QSEL(%rbx)
        cmpl    $QSZ, R_QNUM_MAX(%rbx)
        jb      f_qmax
        movl    $QSZ, R_QNUM(%rbx)
        movl    %r12d, %edi
        movl    %r13d, %esi
        call    qmem
        movl    %eax, R_DESC_LO(%rbx)
        movl    $0, R_DESC_HI(%rbx)
        leal    Q_AVAIL(%rax), %ecx
        movl    %ecx, R_AVAIL_LO(%rbx)
        movl    $0, R_AVAIL_HI(%rbx)
        leal    Q_USED(%rax), %ecx
        movl    %ecx, R_USED_LO(%rbx)
        movl    $0, R_USED_HI(%rbx)
        movl    $1, R_QREADY(%rbx)
        incl    %r13d
        cmpl    $2, %r13d
        jb      1b
        movl    $0xf, R_STATUS(%rbx)
        testl   $0x40, R_STATUS(%rbx)           /* DEVICE_NEEDS_RESET */
        jnz     f_needreset
        /* MAC into the frame templates, then the NET line */
        xorl    %ecx, %ecx
2:      movb    R_CONFIG(%rbx,%rcx), %al
        leaq    frame_a_src(%rip), %rdx
        movb    %al, (%rdx,%rcx)
        leaq    frame_d_src(%rip), %rdx
        movb    %al, (%rdx,%rcx)
        leaq    frame_t_src(%rip), %rdx
        movb    %al, (%rdx,%rcx)
        incl    %ecx
        cmpl    $6, %ecx
        jb      2b
        leaq    s_net(%rip), %rdi
        call    puts
        movl    %r12d, %edi
        call    put_dec
        leaq    s_mac(%rip), %rdi
        call    puts
        xorl    %r13d, %r13d
3:      movzbl  R_CONFIG(%rbx,%r13), %edi
        call    put_byte2
        incl    %r13d
        cmpl    $6, %r13d
        jae     4f
        movl    $':', %edi
        call    putc
        jmp     3b
4:      leaq    s_link(%rip), %rdi
        call    puts
        movzwl  R_CONFIG + 6(%rbx), %edi
        call    put_dec
        call    put_nl
        popq    %r13
        popq    %r12
        popq    %rbx
        ret
f_magic:        leaq    e_magic(%rip), %rdi
                jmp     test_fail
f_notnet:       leaq    e_notnet(%rip), %rdi
                jmp     test_fail
f_nov1:         leaq    e_nov1(%rip), %rdi
                jmp     test_fail
f_featok:       leaq    e_featok(%rip), %rdi
                jmp     test_fail
f_qmax:         leaq    e_qmax(%rip), %rdi
                jmp     test_fail
f_needreset:    leaq    e_needreset(%rip), %rdi
                jmp     test_fail

/* post_rx(EDI = dev, RSI = buffer, EDX = len, ECX = flags): one-descriptor
 * RX chain. */
post_rx:
        pushq   %rbx
        movl    %edi, %ebx
        xorl    %edi, %edi
        call    seg
        movl    %ebx, %edi
        xorl    %esi, %esi
        call    qmem
        movq    %rax, %rdi
        movl    $1, %esi
        call    q_post
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
        call    find_devices
        cmpq    $0, ndevs(%rip)
        jne     1f
        leaq    e_nodev(%rip), %rdi
        jmp     test_fail
1:      xorl    %edi, %edi
        call    dev_init
        leaq    k_mode(%rip), %rdi
        call    cmdline_value
        testq   %rax, %rax
        jz      basic
        movq    %rax, %rbx
        movq    %rbx, %rdi
        leaq    w_two(%rip), %rsi
        call    token_eq
        testl   %eax, %eax
        jnz     two
        movq    %rbx, %rdi
        leaq    w_perf(%rip), %rsi
        call    token_eq
        testl   %eax, %eax
        jnz     perf
        /* fall through: basic */

basic:
        xorl    %edi, %edi
        movl    $1, %esi
        call    qmem
        movq    %rax, %r12                      /* TX queue of dev 0 */
        xorl    %edi, %edi
        xorl    %esi, %esi
        call    qmem
        movq    %rax, %r13                      /* RX queue of dev 0 */

        /* TX: one frame over three descriptors (header, 20, rest) */
        xorl    %edi, %edi
        leaq    frame_a(%rip), %rsi
        movl    $12, %edx
        xorl    %ecx, %ecx
        call    seg
        movl    $1, %edi
        leaq    frame_a + 12(%rip), %rsi
        movl    $20, %edx
        xorl    %ecx, %ecx
        call    seg
        movl    $2, %edi
        leaq    frame_a + 32(%rip), %rsi
        movl    $frame_a_end - frame_a - 32, %edx
        xorl    %ecx, %ecx
        call    seg
        movq    %r12, %rdi
        movl    $3, %esi
        call    q_post
        xorl    %edi, %edi
        movl    $1, %esi
        call    notify
        movq    %r12, %rdi
        movl    $1, %esi
        call    wait_or_fail
        leaq    s_tx_split(%rip), %rdi
        call    puts
        movzwl  Q_USED + 2(%r12), %edi
        call    put_dec
        call    put_nl

        /* RX with no buffers: the host sends first, we post after its go */
        leaq    s_nobuf(%rip), %rdi
        call    put_line
        call    wait_line
        xorl    %edi, %edi
        leaq    rxbufs(%rip), %rsi
        movl    $BUF_SIZE, %edx
        movl    $DESC_W, %ecx
        call    post_rx
        xorl    %edi, %edi
        leaq    rxbufs + BUF_SIZE(%rip), %rsi
        movl    $BUF_SIZE, %edx
        movl    $DESC_W, %ecx
        call    post_rx
        xorl    %edi, %edi
        xorl    %esi, %esi
        call    notify
        movq    %r13, %rdi
        movl    $1, %esi
        call    wait_or_fail
        movq    %r13, %rdi
        xorl    %esi, %esi
        call    print_rx

        /* RX with a buffer already posted */
        leaq    s_posted(%rip), %rdi
        call    put_line
        movq    %r13, %rdi
        movl    $2, %esi
        call    wait_or_fail
        movq    %r13, %rdi
        movl    $1, %esi
        call    print_rx

        /* TX: malformed chains, then a good frame */
        xorl    %edi, %edi                      /* shorter than the header */
        leaq    frame_d(%rip), %rsi
        movl    $8, %edx
        xorl    %ecx, %ecx
        call    seg
        movq    %r12, %rdi
        movl    $1, %esi
        call    q_post
        xorl    %edi, %edi                      /* data outside guest memory */
        leaq    frame_d(%rip), %rsi
        movl    $12, %edx
        xorl    %ecx, %ecx
        call    seg
        movl    $1, %edi
        movabsq $OUTSIDE, %rsi
        movl    $64, %edx
        xorl    %ecx, %ecx
        call    seg
        movq    %r12, %rdi
        movl    $2, %esi
        call    q_post
        xorl    %edi, %edi                      /* larger than 64 KiB + header */
        leaq    frame_d(%rip), %rsi
        movl    $12, %edx
        xorl    %ecx, %ecx
        call    seg
        movl    $1, %edi
        movl    $BIG_ADDR, %esi
        movl    $70000, %edx
        xorl    %ecx, %ecx
        call    seg
        movq    %r12, %rdi
        movl    $2, %esi
        call    q_post
        xorl    %edi, %edi                      /* the good one */
        leaq    frame_d(%rip), %rsi
        movl    $frame_d_end - frame_d, %edx
        xorl    %ecx, %ecx
        call    seg
        movq    %r12, %rdi
        movl    $1, %esi
        call    q_post
        xorl    %edi, %edi
        movl    $1, %esi
        call    notify
        movq    %r12, %rdi
        movl    $5, %esi
        call    wait_or_fail
        leaq    s_txbad(%rip), %rdi
        call    puts
        movzwl  Q_USED + 2(%r12), %edi
        call    put_dec
        call    put_nl

        /* RX: a read-only chain and one outside memory, then a good one */
        xorl    %edi, %edi
        leaq    rxbufs + 2 * BUF_SIZE(%rip), %rsi
        movl    $BUF_SIZE, %edx
        xorl    %ecx, %ecx
        call    post_rx
        xorl    %edi, %edi
        movabsq $OUTSIDE, %rsi
        movl    $BUF_SIZE, %edx
        movl    $DESC_W, %ecx
        call    post_rx
        xorl    %edi, %edi
        leaq    rxbufs + 3 * BUF_SIZE(%rip), %rsi
        movl    $BUF_SIZE, %edx
        movl    $DESC_W, %ecx
        call    post_rx
        xorl    %edi, %edi
        xorl    %esi, %esi
        call    notify
        leaq    s_rxbad_ready(%rip), %rdi
        call    put_line
        movq    %r13, %rdi
        movl    $5, %esi
        call    wait_or_fail
        leaq    s_rxbad(%rip), %rdi
        call    puts
        movq    %r13, %rdi
        movl    $2, %esi
        call    used_len
        movl    %eax, %edi
        call    put_hex
        call    put_space
        movq    %r13, %rdi
        movl    $3, %esi
        call    used_len
        movl    %eax, %edi
        call    put_hex
        call    put_nl
        movq    %r13, %rdi
        movl    $4, %esi
        call    print_rx
        jmp     out

/* two NICs: a frame out of each, then a frame into each */
two:
        cmpq    $2, ndevs(%rip)
        jae     1f
        leaq    e_twodevs(%rip), %rdi
        jmp     test_fail
1:      xorl    %r14d, %r14d                    /* device (0 is set up) */
2:      testl   %r14d, %r14d
        jz      21f
        movl    %r14d, %edi
        call    dev_init                        /* MAC of this device into frame_t */
21:
        leal    '0'(%r14), %eax
        movb    %al, frame_t_dev(%rip)
        xorl    %edi, %edi
        leaq    frame_t(%rip), %rsi
        movl    $frame_t_end - frame_t, %edx
        xorl    %ecx, %ecx
        call    seg
        movl    %r14d, %edi
        movl    $1, %esi
        call    qmem
        movq    %rax, %r12
        movq    %rax, %rdi
        movl    $1, %esi
        call    q_post
        movl    %r14d, %edi
        movl    $1, %esi
        call    notify
        movq    %r12, %rdi
        movl    $1, %esi
        call    wait_or_fail
        leaq    s_tx_dev(%rip), %rdi
        call    puts
        movl    %r14d, %edi
        call    put_dec
        leaq    s_ok(%rip), %rdi
        call    put_line
        movl    %r14d, %edi                     /* an RX buffer for later */
        movl    %r14d, %esi
        shll    $11, %esi
        leaq    rxbufs(%rip), %rax
        addq    %rax, %rsi
        movl    $BUF_SIZE, %edx
        movl    $DESC_W, %ecx
        call    post_rx
        movl    %r14d, %edi
        xorl    %esi, %esi
        call    notify
        incl    %r14d
        cmpl    $2, %r14d
        jb      2b
        leaq    s_two_ready(%rip), %rdi
        call    put_line
        xorl    %r14d, %r14d
3:      movl    %r14d, %edi
        xorl    %esi, %esi
        call    qmem
        movq    %rax, %r13
        movq    %rax, %rdi
        movl    $1, %esi
        call    wait_or_fail
        leaq    s_rx_dev(%rip), %rdi
        call    puts
        movl    %r14d, %edi
        call    put_dec
        call    put_space
        movq    %r13, %rdi
        xorl    %esi, %esi
        call    print_rx
        incl    %r14d
        cmpl    $2, %r14d
        jb      3b
        jmp     out

/* perf: count frames of size bytes out, then count frames in */
perf:
        leaq    k_count(%rip), %rdi
        call    cmdline_value
        movl    $1000, %ecx
        testq   %rax, %rax
        jz      1f
        movq    %rax, %rdi
        call    parse_dec
        movq    %rax, %rcx
1:      movq    %rcx, perf_count(%rip)
        leaq    k_size(%rip), %rdi
        call    cmdline_value
        movl    $1514 + 12, %ecx
        testq   %rax, %rax
        jz      2f
        movq    %rax, %rdi
        call    parse_dec
        movq    %rax, %rcx
2:      movq    %rcx, perf_size(%rip)
        /* perfbuf: header zero, broadcast destination, our MAC, 0x88b5 */
        leaq    perfbuf(%rip), %rdi
        movl    $0xffffffff, 12(%rdi)
        movw    $0xffff, 16(%rdi)
        movl    frame_a_src(%rip), %eax
        movl    %eax, 18(%rdi)
        movw    frame_a_src + 4(%rip), %ax
        movw    %ax, 22(%rdi)
        movw    $0xb588, 24(%rdi)
        xorl    %edi, %edi
        movl    $1, %esi
        call    qmem
        movq    %rax, %r12                      /* TX queue */
        leaq    s_ptx_start(%rip), %rdi
        call    put_line
        xorl    %r14d, %r14d                    /* posted */
3:      cmpq    perf_count(%rip), %r14
        jae     5f
        movzwl  Q_USED + 2(%r12), %eax          /* keep PERF_WINDOW in flight */
        movl    %r14d, %ecx
        subw    %ax, %cx
        cmpw    $PERF_WINDOW, %cx
        jae     4f
        xorl    %edi, %edi
        leaq    perfbuf(%rip), %rsi
        movl    perf_size(%rip), %edx
        xorl    %ecx, %ecx
        call    seg
        movq    %r12, %rdi
        movl    $1, %esi
        call    q_post
        incq    %r14
        movl    %r14d, %eax
        andl    $15, %eax
        jnz     3b                              /* notify every 16 frames */
        xorl    %edi, %edi
        movl    $1, %esi
        call    notify
        jmp     3b
4:      xorl    %edi, %edi                      /* window full: kick, wait */
        movl    $1, %esi
        call    notify
        leal    1 - PERF_WINDOW(%r14), %esi     /* until one slot is free */
        movq    %r12, %rdi
        call    wait_or_fail
        jmp     3b
5:      xorl    %edi, %edi
        movl    $1, %esi
        call    notify
        movq    %r12, %rdi
        movl    %r14d, %esi
        call    wait_or_fail
        leaq    s_ptx_done(%rip), %rdi
        call    puts
        movq    %r14, %rdi
        call    put_dec
        call    put_nl

        /* RX: PERF_WINDOW buffers, reposted as they come back */
        xorl    %edi, %edi
        xorl    %esi, %esi
        call    qmem
        movq    %rax, %r13
        xorl    %r15d, %r15d
6:      xorl    %edi, %edi
        movl    %r15d, %esi
        shll    $11, %esi
        leaq    rxbufs(%rip), %rax
        addq    %rax, %rsi
        movl    $BUF_SIZE, %edx
        movl    $DESC_W, %ecx
        call    post_rx
        incl    %r15d
        cmpl    $PERF_WINDOW, %r15d
        jb      6b
        xorl    %edi, %edi
        xorl    %esi, %esi
        call    notify
        leaq    s_prx_ready(%rip), %rdi
        call    put_line
        xorl    %r14d, %r14d                    /* received */
7:      cmpq    perf_count(%rip), %r14
        jae     9f
        leal    1(%r14), %esi
        movq    %r13, %rdi
        call    wait_or_fail
        incq    %r14
        /* repost the buffer of the chain just used (its head descriptor) */
        movq    %r13, %rdi
        leal    -1(%r14), %esi
        call    used_len
        shll    $4, %edx
        movq    (%r13,%rdx), %rsi
        xorl    %edi, %edi
        movl    $BUF_SIZE, %edx
        movl    $DESC_W, %ecx
        call    post_rx
        movl    %r14d, %eax
        andl    $15, %eax
        jnz     7b
        xorl    %edi, %edi
        xorl    %esi, %esi
        call    notify
        jmp     7b
9:      leaq    s_prx_done(%rip), %rdi
        call    puts
        movq    %r14, %rdi
        call    put_dec
        call    put_nl

out:
        popq    %r15
        popq    %r14
        popq    %r13
        popq    %r12
        popq    %rbx
        ret
