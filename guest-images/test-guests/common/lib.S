/*
 * Ring-3 runtime shared by every test guest (64-bit, CPL 3, IOPL 3).
 *
 * Calling convention: System V (args in RDI, RSI, RDX; RBX, RBP, R12-R15
 * preserved). Each guest provides:
 *   guest_name  NUL-terminated name used in "EMBER-TEST <name> ..."
 *   guest_main  called after the start line; returning means success
 *               (prints done and resets)
 *   ap_main     (smp only; weak default here) called on each AP in ring 3
 *               with the CPU index in EDI.
 */
#include "defs.h"

#define OUTBUF_SIZE 256

        .text
/* ------------------------------------------------------------ start-up */
/* ring3_start(protocol, info): first ring-3 code of the BSP. */
        .globl  ring3_start
ring3_start:
        andq    $-16, %rsp
        /* Boot timer: the guest's "init" starts here (Ember logs the time since exec). */
        movl    $BOOT_TIMER, %eax
        movb    $BOOT_TIMER_MAGIC, (%rax)
        movl    %edi, boot_protocol(%rip)
        movq    %rsi, boot_info(%rip)
        call    serial_init
        call    parse_bootinfo
        call    put_prefix
        leaq    s_start(%rip), %rdi
        call    puts
        leaq    s_pvh(%rip), %rdi
        cmpl    $PROTO_PVH, boot_protocol(%rip)
        je      1f
        leaq    s_linux64(%rip), %rdi
1:      call    puts
        call    put_nl
        movq    parse_error(%rip), %rdi
        testq   %rdi, %rdi
        jnz     test_fail
        call    guest_main
        jmp     test_done

/* ap_ring3_start(cpu index): first ring-3 code of an AP. */
        .globl  ap_ring3_start
ap_ring3_start:
        andq    $-16, %rsp
        call    ap_main
        movl    $SVC_HALT, %eax
        call    svc
1:      pause
        jmp     1b

        .weak   ap_main
ap_main:
        ret

/* svc(EAX = service): the ud2 at svc_gate traps to the ring-0 handler,
 * which recognises the address; SVC_NOP returns past it. */
        .globl  svc, svc_gate
svc:
svc_gate:
        ud2
        ret

/* ------------------------------------------------------------- serial */
        .globl  serial_init
serial_init:
        movw    $COM1 + 1, %dx
        xorl    %eax, %eax
        outb    %al, %dx                /* IER: no interrupts */
        movw    $COM1 + 3, %dx
        movb    $0x80, %al
        outb    %al, %dx                /* LCR: DLAB */
        movw    $COM1, %dx
        movb    $1, %al
        outb    %al, %dx                /* divisor 1: 115200 */
        movw    $COM1 + 1, %dx
        xorl    %eax, %eax
        outb    %al, %dx
        movw    $COM1 + 3, %dx
        movb    $3, %al
        outb    %al, %dx                /* 8N1 */
        /* FCR is left alone: enabling the FIFO would flush input that
         * arrived before the guest started. */
        movw    $COM1 + 4, %dx
        movb    $3, %al
        outb    %al, %dx                /* DTR | RTS, OUT2 off */
        ret

/* putc(DIL): buffered; the buffer goes out at '\n' (sent as "\r\n") or
 * when full. Clobbers RAX, RCX, RDX, RSI, RDI, R8. Not re-entrant: on SMP,
 * whole lines must be printed under a lock. */
        .globl  putc
putc:
        movl    outbuf_len(%rip), %eax
        leaq    outbuf(%rip), %rcx
        cmpb    $'\n', %dil
        jne     1f
        movb    $'\r', (%rcx,%rax)
        incl    %eax
1:      movb    %dil, (%rcx,%rax)
        incl    %eax
        movl    %eax, outbuf_len(%rip)
        cmpb    $'\n', %dil
        je      flush
        cmpl    $OUTBUF_SIZE - 2, %eax
        jae     flush
        ret

/* flush(): write out the buffer, polling LSR.THRE before each byte (the
 * FIFO is not enabled). Where the host honours IOPL=3 this is a ring-3 loop; where it does not (PVM: each ring-3 `out` traps to
 * the #GP handler, which sets iopl_trapped), one SVC_WRITE service call. */
        .globl  flush
flush:
        movl    outbuf_len(%rip), %esi
        testl   %esi, %esi
        jz      9f
        leaq    outbuf(%rip), %rdi
        movl    $0, outbuf_len(%rip)
        cmpb    $0, iopl_trapped(%rip)
        je      1f
        movl    $SVC_WRITE, %eax
        jmp     svc
1:      movw    $COM1 + 5, %dx          /* wait (bounded) for THR empty */
        movl    $100000, %ecx
2:      inb     %dx, %al
        testb   $0x20, %al
        jnz     3f
        pause
        decl    %ecx
        jnz     2b
3:      movw    $COM1, %dx
        movb    (%rdi), %al
        outb    %al, %dx
        incq    %rdi
        decl    %esi
        jnz     1b
9:      ret

/* getc_poll() -> EAX = byte, or -1 if none waiting. */
        .globl  getc_poll
getc_poll:
        movw    $COM1 + 5, %dx
        inb     %dx, %al
        testb   $1, %al
        jz      1f
        movw    $COM1, %dx
        xorl    %eax, %eax
        inb     %dx, %al
        ret
1:      movl    $-1, %eax
        ret

/* puts(RDI = NUL-terminated string). */
        .globl  puts
puts:
        pushq   %rbx
        movq    %rdi, %rbx
1:      movzbl  (%rbx), %edi
        testl   %edi, %edi
        jz      2f
        call    putc
        incq    %rbx
        jmp     1b
2:      popq    %rbx
        ret

/* putsn(RDI = string, RSI = max length): stops at NUL or after RSI bytes. */
        .globl  putsn
putsn:
        pushq   %rbx
        pushq   %r12
        pushq   %rax
        movq    %rdi, %rbx
        leaq    (%rdi,%rsi), %r12
1:      cmpq    %r12, %rbx
        jae     2f
        movzbl  (%rbx), %edi
        testl   %edi, %edi
        jz      2f
        call    putc
        incq    %rbx
        jmp     1b
2:      popq    %rax
        popq    %r12
        popq    %rbx
        ret

        .globl  put_nl
put_nl:
        movl    $'\n', %edi
        jmp     putc

        .globl  put_space
put_space:
        movl    $' ', %edi
        jmp     putc

/* put_hex(RDI): "0x" + lowercase hex, no leading zeros. */
        .globl  put_hex
put_hex:
        pushq   %rbx
        pushq   %r12
        pushq   %rax
        movq    %rdi, %rbx
        movl    $'0', %edi
        call    putc
        movl    $'x', %edi
        call    putc
        movl    $60, %r12d
1:      testl   %r12d, %r12d
        jz      2f
        movq    %rbx, %rax
        movl    %r12d, %ecx
        shrq    %cl, %rax
        testb   $0xf, %al
        jnz     2f
        subl    $4, %r12d
        jmp     1b
2:      movq    %rbx, %rax
        movl    %r12d, %ecx
        shrq    %cl, %rax
        andl    $0xf, %eax
        leaq    hexdigits(%rip), %rdx
        movzbl  (%rdx,%rax), %edi
        call    putc
        subl    $4, %r12d
        jns     2b
        popq    %rax
        popq    %r12
        popq    %rbx
        ret

/* put_dec(RDI): unsigned decimal. */
        .globl  put_dec
put_dec:
        pushq   %rbx
        subq    $32, %rsp
        movq    %rdi, %rax
        leaq    31(%rsp), %rbx
        movb    $0, (%rbx)
        movl    $10, %ecx
1:      xorl    %edx, %edx
        divq    %rcx
        addb    $'0', %dl
        decq    %rbx
        movb    %dl, (%rbx)
        testq   %rax, %rax
        jnz     1b
        movq    %rbx, %rdi
        call    puts
        addq    $32, %rsp
        popq    %rbx
        ret

/* put_prefix(): "EMBER-TEST <guest> " */
        .globl  put_prefix
put_prefix:
        pushq   %rax
        leaq    s_prefix(%rip), %rdi
        call    puts
        leaq    guest_name(%rip), %rdi
        call    puts
        call    put_space
        popq    %rax
        ret

/* put_line(RDI): string + newline. */
        .globl  put_line
put_line:
        pushq   %rax
        call    puts
        call    put_nl
        popq    %rax
        ret

/* ---------------------------------------------------- test life cycle */
/* test_fail(RDI = reason): "EMBER-TEST <guest> fail <reason>", reset. */
        .globl  test_fail
test_fail:
        andq    $-16, %rsp
        pushq   %rdi
        pushq   %rdi
        call    put_prefix
        leaq    s_fail(%rip), %rdi
        call    puts
        popq    %rdi
        call    put_line
        jmp     reset

/* test_done(): "EMBER-TEST <guest> done", reset. */
        .globl  test_done
test_done:
        andq    $-16, %rsp
        call    put_prefix
        leaq    s_done(%rip), %rdi
        call    put_line
        /* fall through */

/* reset(): i8042 reset (Ember exits 0), else triple fault (QEMU -no-reboot). */
        .globl  reset
reset:
        movw    $0x64, %dx
        movb    $0xfe, %al
        outb    %al, %dx
        rdtsc                           /* give the VMM ~10^7 TSC ticks */
        shlq    $32, %rdx
        orq     %rax, %rdx
        movq    %rdx, %rsi
1:      pause
        rdtsc
        shlq    $32, %rdx
        orq     %rax, %rdx
        subq    %rsi, %rdx
        cmpq    $10000000, %rdx
        jb      1b
        .globl  triple
triple:
        movl    $SVC_TRIPLE, %eax
        call    svc
        jmp     triple

/* user_exception(vector, error, rip): the ring-0 handler resumes ring 3
 * here after an unexpected exception in ring 3. */
        .globl  user_exception
user_exception:
        andq    $-16, %rsp
        pushq   %rdx
        pushq   %rsi
        pushq   %rdi
        pushq   %rdi
        call    put_prefix
        leaq    s_fail(%rip), %rdi
        call    puts
        leaq    s_exc(%rip), %rdi
        call    puts
        popq    %rdi
        popq    %rdi
        call    put_dec
        leaq    s_exc_err(%rip), %rdi
        call    puts
        popq    %rdi
        call    put_hex
        leaq    s_exc_rip(%rip), %rdi
        call    puts
        popq    %rdi
        pushq   %rdi
        call    put_hex
        call    put_nl
        jmp     reset

/* -------------------------------------------------------------- time */
/* rdtsc64() -> RAX */
        .globl  rdtsc64
rdtsc64:
        rdtsc
        shlq    $32, %rdx
        orq     %rdx, %rax
        ret

/* delay_ticks(RDI = TSC ticks) */
        .globl  delay_ticks
delay_ticks:
        call    rdtsc64
        movq    %rax, %rsi
1:      pause
        call    rdtsc64
        subq    %rsi, %rax
        cmpq    %rdi, %rax
        jb      1b
        ret

/* ------------------------------------------------------------- locks */
/* spin_lock(RDI = &u32), spin_unlock(RDI) */
        .globl  spin_lock, spin_unlock
spin_lock:
        movl    $1, %eax
        xchgl   %eax, (%rdi)
        testl   %eax, %eax
        jz      2f
1:      pause
        cmpl    $0, (%rdi)
        jne     1b
        jmp     spin_lock
2:      ret
spin_unlock:
        movl    $0, (%rdi)
        ret

/* ------------------------------------------------------------ strings */
/* cmdline_value(RDI = "key=") -> RAX = pointer to the value of the first
 * space-separated command-line token starting with the key, or 0. */
        .globl  cmdline_value
cmdline_value:
        movq    cmdline_ptr(%rip), %rsi
        testq   %rsi, %rsi
        jz      9f
1:      movb    (%rsi), %al             /* skip spaces */
        cmpb    $' ', %al
        jne     2f
        incq    %rsi
        jmp     1b
2:      testb   %al, %al
        jz      9f
        xorl    %ecx, %ecx              /* compare with key */
3:      movb    (%rdi,%rcx), %al
        testb   %al, %al
        jz      8f                      /* whole key matched */
        cmpb    (%rsi,%rcx), %al
        jne     4f
        incq    %rcx
        jmp     3b
4:      movb    (%rsi), %al             /* skip to the end of the token */
        testb   %al, %al
        jz      9f
        cmpb    $' ', %al
        je      1b
        incq    %rsi
        jmp     4b
8:      leaq    (%rsi,%rcx), %rax
        ret
9:      xorl    %eax, %eax
        ret

/* token_eq(RDI = token (ends at NUL/space/CR/LF), RSI = word) -> EAX 1/0 */
        .globl  token_eq
token_eq:
        xorl    %ecx, %ecx
1:      movb    (%rsi,%rcx), %al
        movb    (%rdi,%rcx), %dl
        testb   %al, %al
        jz      2f
        cmpb    %al, %dl
        jne     8f
        incq    %rcx
        jmp     1b
2:      testb   %dl, %dl                /* word ended: token must end too */
        jz      7f
        cmpb    $' ', %dl
        je      7f
        cmpb    $'\r', %dl
        je      7f
        cmpb    $'\n', %dl
        je      7f
8:      xorl    %eax, %eax
        ret
7:      movl    $1, %eax
        ret

/* parse_dec(RDI = string) -> RAX = value of the leading decimal digits */
        .globl  parse_dec
parse_dec:
        xorl    %eax, %eax
1:      movzbl  (%rdi), %ecx
        subl    $'0', %ecx
        cmpl    $9, %ecx
        ja      2f
        imulq   $10, %rax
        addq    %rcx, %rax
        incq    %rdi
        jmp     1b
2:      ret

/* fnv1a64(RDI = data, RSI = length) -> RAX */
        .globl  fnv1a64
fnv1a64:
        movabsq $0xcbf29ce484222325, %rax
/* fnv1a64_more(RDI = data, RSI = length, RAX = hash so far) -> RAX: the hash
 * of a stream that continues with these bytes. */
        .globl  fnv1a64_more
fnv1a64_more:
        movabsq $0x100000001b3, %r8
        addq    %rdi, %rsi
1:      cmpq    %rsi, %rdi
        jae     2f
        movzbl  (%rdi), %ecx
        xorq    %rcx, %rax
        imulq   %r8, %rax
        incq    %rdi
        jmp     1b
2:      ret

/* parse_hex(RDI = string) -> RAX = value of the leading hex digits */
        .globl  parse_hex
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

/* virtio_mmio_base(EDI = index) -> RAX = base address of the index-th
 * "@0x<hex>" on the command line (virtio_mmio.device=<size>@0x<base>:<irq>,
 * as Ember announces its devices and QEMU microvm's auto-kernel-cmdline
 * does), or 0. */
        .globl  virtio_mmio_base
virtio_mmio_base:
        pushq   %rbx
        pushq   %r12
        pushq   %rax
        movl    %edi, %r12d
        movq    cmdline_ptr(%rip), %rbx
        testq   %rbx, %rbx
        jz      8f
1:      movzbl  (%rbx), %eax
        testl   %eax, %eax
        jz      8f
        cmpb    $'@', %al
        jne     2f
        cmpb    $'0', 1(%rbx)
        jne     2f
        cmpb    $'x', 2(%rbx)
        jne     2f
        testl   %r12d, %r12d
        jz      3f
        decl    %r12d
2:      incq    %rbx
        jmp     1b
3:      leaq    3(%rbx), %rdi
        call    parse_hex
        jmp     9f
8:      xorl    %eax, %eax
9:      popq    %rcx
        popq    %r12
        popq    %rbx
        ret

/* ------------------------------------------------------------ boot info */
/* parse_bootinfo(): normalise the PVH start info or Linux zero page into
 * mm_ptr/mm_count/mm_stride, cmdline_ptr, initrd_addr/initrd_size/have_initrd.
 * Sets parse_error on a malformed structure. */
parse_bootinfo:
        movq    boot_info(%rip), %rsi
        cmpl    $PROTO_PVH, boot_protocol(%rip)
        jne     5f
        /* struct hvm_start_info */
        cmpl    $0x336ec578, (%rsi)
        jne     4f
        movq    0x18(%rsi), %rax
        movq    %rax, cmdline_ptr(%rip)
        cmpl    $0, 0x0c(%rsi)          /* nr_modules */
        je      1f
        movq    0x10(%rsi), %rdx        /* modlist_paddr */
        movq    0(%rdx), %rax
        movq    %rax, initrd_addr(%rip)
        movq    8(%rdx), %rax
        movq    %rax, initrd_size(%rip)
        movl    $1, have_initrd(%rip)
1:      movq    $24, mm_stride(%rip)
        cmpl    $1, 0x04(%rsi)          /* version >= 1 has the memmap */
        jb      2f
        movq    0x28(%rsi), %rax
        movq    %rax, mm_ptr(%rip)
        movl    0x30(%rsi), %eax
        movq    %rax, mm_count(%rip)
2:      ret
4:      leaq    s_bad_magic(%rip), %rax
        movq    %rax, parse_error(%rip)
        ret
5:      /* struct boot_params (Linux zero page) */
        movzbl  0x1e8(%rsi), %eax
        movq    %rax, mm_count(%rip)
        leaq    0x2d0(%rsi), %rax
        movq    %rax, mm_ptr(%rip)
        movq    $20, mm_stride(%rip)
        movl    0x228(%rsi), %eax       /* cmd_line_ptr */
        movl    0xc8(%rsi), %edx        /* ext_cmd_line_ptr */
        shlq    $32, %rdx
        orq     %rdx, %rax
        movq    %rax, cmdline_ptr(%rip)
        movl    0x218(%rsi), %eax       /* ramdisk_image */
        movl    0xc0(%rsi), %edx
        shlq    $32, %rdx
        orq     %rdx, %rax
        movq    %rax, initrd_addr(%rip)
        movl    0x21c(%rsi), %eax       /* ramdisk_size */
        movl    0xc4(%rsi), %edx
        shlq    $32, %rdx
        orq     %rdx, %rax
        movq    %rax, initrd_size(%rip)
        testq   %rax, %rax
        setnz   %al
        movzbl  %al, %eax
        movl    %eax, have_initrd(%rip)
        cmpq    $128, mm_count(%rip)
        jbe     6f
        leaq    s_bad_e820(%rip), %rax
        movq    %rax, parse_error(%rip)
6:      ret

/* ------------------------------------------------------------ MP table */
/* mp_scan_range(RDI = start, RSI = end) -> RAX = floating pointer or 0 */
mp_scan_range:
1:      leaq    16(%rdi), %rax
        cmpq    %rsi, %rax
        ja      9f
        cmpl    $0x5f504d5f, (%rdi)     /* "_MP_" */
        jne     3f
        movzbl  8(%rdi), %ecx           /* length in 16-byte units */
        testl   %ecx, %ecx
        jz      3f
        shll    $4, %ecx
        xorl    %eax, %eax
        xorl    %edx, %edx
2:      addb    (%rdi,%rdx), %al
        incl    %edx
        cmpl    %ecx, %edx
        jb      2b
        testb   %al, %al
        jnz     3f
        movq    %rdi, %rax
        ret
3:      addq    $16, %rdi
        jmp     1b
9:      xorl    %eax, %eax
        ret

/* mp_find() -> RAX = MP floating pointer structure or 0. Searches the last
 * KiB of base memory (0x9fc00 and the BDA's value), the EBDA's first KiB,
 * then 0xf0000-0xfffff, as the MP spec says. */
        .globl  mp_find
mp_find:
        movq    $0x9fc00, %rdi
        movq    $0xa0000, %rsi
        call    mp_scan_range
        testq   %rax, %rax
        jnz     9f
        movzwl  0x40e, %edi             /* EBDA segment from the BDA */
        shll    $4, %edi
        cmpl    $0x80000, %edi
        jb      1f
        cmpl    $0x9fc00, %edi
        jae     1f
        leaq    1024(%rdi), %rsi
        call    mp_scan_range
        testq   %rax, %rax
        jnz     9f
1:      movzwl  0x413, %edi             /* base memory size in KiB */
        cmpl    $512, %edi
        jb      2f
        cmpl    $639, %edi
        jae     2f
        shll    $10, %edi
        leaq    1024(%rdi), %rsi
        call    mp_scan_range
        testq   %rax, %rax
        jnz     9f
2:      movq    $0xf0000, %rdi
        movq    $0x100000, %rsi
        call    mp_scan_range
9:      ret

/* mp_cpus(RDI = u32 ids[MAX_CPUS] or 0) -> EAX = number of enabled
 * processor entries (0 if there is no usable table); fills ids (APIC ids,
 * at most MAX_CPUS of them). */
        .globl  mp_cpus
mp_cpus:
        pushq   %rbx
        pushq   %r12
        pushq   %r13
        movq    %rdi, %r12
        call    mp_find
        testq   %rax, %rax
        jz      8f
        movl    4(%rax), %ebx           /* config table (0: default config) */
        testl   %ebx, %ebx
        jz      8f
        cmpl    $0x504d4350, (%rbx)     /* "PCMP" */
        jne     8f
        movzwl  4(%rbx), %ecx           /* base table length */
        xorl    %eax, %eax
        xorl    %edx, %edx
1:      addb    (%rbx,%rdx), %al
        incl    %edx
        cmpl    %ecx, %edx
        jb      1b
        testb   %al, %al
        jnz     8f
        leaq    (%rbx,%rcx), %r8        /* end of base table */
        movzwl  0x22(%rbx), %r9d        /* entry count */
        leaq    0x2c(%rbx), %rsi        /* first entry */
        xorl    %r13d, %r13d            /* enabled CPUs */
2:      testl   %r9d, %r9d
        jz      7f
        cmpq    %r8, %rsi
        jae     7f
        movzbl  (%rsi), %eax
        testl   %eax, %eax
        jnz     4f
        testb   $1, 3(%rsi)             /* processor entry: CPU enabled? */
        jz      3f
        testq   %r12, %r12
        jz      5f
        cmpl    $MAX_CPUS, %r13d
        jae     5f
        movzbl  1(%rsi), %eax
        movl    %eax, (%r12,%r13,4)
5:      incl    %r13d
3:      addq    $20, %rsi
        decl    %r9d
        jmp     2b
4:      cmpl    $4, %eax                /* types 1-4 are 8 bytes */
        ja      7f
        addq    $8, %rsi
        decl    %r9d
        jmp     2b
7:      movl    %r13d, %eax
        jmp     9f
8:      xorl    %eax, %eax
9:      popq    %r13
        popq    %r12
        popq    %rbx
        ret

/* ---------------------------------------------------------------- data */
        .section .rodata
hexdigits:      .ascii  "0123456789abcdef"
s_prefix:       .asciz  "EMBER-TEST "
s_start:        .asciz  "start protocol="
s_pvh:          .asciz  "pvh"
s_linux64:      .asciz  "linux64"
s_fail:         .asciz  "fail "
s_done:         .asciz  "done"
s_exc:          .asciz  "exception vector="
s_exc_err:      .asciz  " error="
s_exc_rip:      .asciz  " rip="
s_bad_magic:    .asciz  "bad-pvh-start-info-magic"
s_bad_e820:     .asciz  "bad-e820-entry-count"

        .bss
        .p2align 6
outbuf:         .skip   OUTBUF_SIZE

        .data
        .p2align 3
outbuf_len:     .long   0
        .p2align 3
        .globl  boot_protocol, boot_info, mm_ptr, mm_count, mm_stride
        .globl  cmdline_ptr, initrd_addr, initrd_size, have_initrd
boot_info:      .quad   0
mm_ptr:         .quad   0
mm_count:       .quad   0
mm_stride:      .quad   0
cmdline_ptr:    .quad   0
initrd_addr:    .quad   0
initrd_size:    .quad   0
parse_error:    .quad   0
boot_protocol:  .long   0
have_initrd:    .long   0
