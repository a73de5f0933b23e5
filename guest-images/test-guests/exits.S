/* exits: times VM-exit round trips for the exit-cost benchmark, with the
 * TSC (rdtsc in ring 3 on both sides of each loop).
 *
 *   mmio=<n>  (default 20000) 32-bit reads from ring 3 of a device register
 *             that exists in every VMM it runs under: the virtio-mmio
 *             MagicValue register of the first "@0x<base>" device on the
 *             command line (Ember's and QEMU microvm's virtio_mmio.device=).
 *             Without a device it reads the unmapped address 0xd0000000
 *             instead (unmapped in Ember and in QEMU microvm) and says so.
 *   pio=<n>   (default 4096, rounded down to a multiple of 16) `inb` of
 *             COM1's line status register (0x3fd) from ring 0, through the
 *             SVC_PIO_READS service: on PVM ring-3 port I/O traps to the
 *             guest's #GP handler, which would dominate the measurement.
 *             Then the same ring-0 loop without the port read (SVC_R0_SPIN),
 *             the share of the loop itself (large on PVM, where ring-0 code
 *             is emulated).
 *
 * Output (see docs/test-guests-protocol.md):
 *   EXITS mmio addr=<hex> n=<n> tsc=<ticks>     (addr ends " unmapped" if so)
 *   EXITS pio port=0x3fd n=<n> tsc=<ticks>
 *   EXITS r0loop n=<n> tsc=<ticks>
 */
#include "common/defs.h"

#define UNMAPPED     0xd0000000
#define VIRTIO_MAGIC 0x74726976
#define LSR_PORT     (COM1 + 5)

        .section .rodata
        .globl  guest_name
guest_name:     .asciz  "exits"
k_mmio:         .asciz  "mmio="
k_pio:          .asciz  "pio="
s_mmio:         .asciz  "EXITS mmio addr="
s_unmapped:     .asciz  " unmapped"
s_n:            .asciz  " n="
s_tsc:          .asciz  " tsc="
s_pio:          .asciz  "EXITS pio port="
s_r0:           .asciz  "EXITS r0loop"
e_magic:        .asciz  "bad-virtio-magic"

        .text
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

/* put_n_tsc(RDI = n, RSI = ticks): " n=<n> tsc=<ticks>\n" */
put_n_tsc:
        pushq   %rbx
        pushq   %r12
        pushq   %rax
        movq    %rdi, %rbx
        movq    %rsi, %r12
        leaq    s_n(%rip), %rdi
        call    puts
        movq    %rbx, %rdi
        call    put_dec
        leaq    s_tsc(%rip), %rdi
        call    puts
        movq    %r12, %rdi
        call    put_dec
        call    put_nl
        popq    %rax
        popq    %r12
        popq    %rbx
        ret

/* r0_loop(EAX = service, RDI = count) -> RAX = TSC ticks */
r0_loop:
        pushq   %rbx
        pushq   %r12
        pushq   %r13
        movl    %eax, %ebx
        movq    %rdi, %r12
        call    rdtsc64
        movq    %rax, %r13
        movl    %ebx, %eax
        movq    %r12, %rdi
        movw    $LSR_PORT, %dx
        call    svc
        call    rdtsc64
        subq    %r13, %rax
        popq    %r13
        popq    %r12
        popq    %rbx
        ret

        .globl  guest_main
guest_main:
        pushq   %rbx
        pushq   %r12
        pushq   %r13
        pushq   %r14
        pushq   %r15

        /* MMIO: the first virtio device's MagicValue, else unmapped. */
        xorl    %edi, %edi
        call    virtio_mmio_base
        movq    %rax, %rbx
        xorl    %r15d, %r15d                    /* 1: unmapped */
        testq   %rbx, %rbx
        jnz     1f
        movl    $UNMAPPED, %ebx
        movl    $1, %r15d
        jmp     2f
1:      cmpl    $VIRTIO_MAGIC, (%rbx)
        je      2f
        leaq    e_magic(%rip), %rdi
        jmp     test_fail
2:      leaq    k_mmio(%rip), %rdi
        movl    $20000, %esi
        call    arg
        movq    %rax, %r12                      /* n */
        call    rdtsc64
        movq    %rax, %r13
        movq    %r12, %rcx
        testq   %rcx, %rcx
        jz      4f
3:      movl    (%rbx), %eax
        decq    %rcx
        jnz     3b
4:      call    rdtsc64
        subq    %r13, %rax
        movq    %rax, %r14                      /* ticks */
        leaq    s_mmio(%rip), %rdi
        call    puts
        movq    %rbx, %rdi
        call    put_hex
        testl   %r15d, %r15d
        jz      5f
        leaq    s_unmapped(%rip), %rdi
        call    puts
5:      movq    %r12, %rdi
        movq    %r14, %rsi
        call    put_n_tsc

        /* Port I/O from ring 0, then the loop alone. */
        leaq    k_pio(%rip), %rdi
        movl    $4096, %esi
        call    arg
        andq    $-16, %rax
        movq    %rax, %r12
        movl    $SVC_PIO_READS, %eax
        movq    %r12, %rdi
        call    r0_loop
        movq    %rax, %r14
        leaq    s_pio(%rip), %rdi
        call    puts
        movl    $LSR_PORT, %edi
        call    put_hex
        movq    %r12, %rdi
        movq    %r14, %rsi
        call    put_n_tsc
        movl    $SVC_R0_SPIN, %eax
        movq    %r12, %rdi
        call    r0_loop
        movq    %rax, %r14
        leaq    s_r0(%rip), %rdi
        call    puts
        movq    %r12, %rdi
        movq    %r14, %rsi
        call    put_n_tsc

        popq    %r15
        popq    %r14
        popq    %r13
        popq    %r12
        popq    %rbx
        ret
