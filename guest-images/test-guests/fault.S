/* fault: exercises unhandled guest accesses, chosen by fault=<mode> on the
 * command line: mmio (write+read 0xd0000000), pio (read port 0x1234, write
 * port 0x1235), pci (the PCI configuration mechanism #1 probe Linux makes:
 * 32-bit write of 0x80000000 to 0xcf8, 32-bit reads of 0xcf8 and 0xcfc),
 * triple (triple fault), all (default: mmio, pio, triple). */
#include "common/defs.h"

#define MMIO_ADDR 0xd0000000

        .section .rodata
        .globl  guest_name
guest_name:     .asciz  "fault"
s_key:          .asciz  "fault="
s_all:          .asciz  "all"
s_mmio:         .asciz  "mmio"
s_pio:          .asciz  "pio"
s_pci:          .asciz  "pci"
s_pci_addr:     .asciz  "PCI addr "
s_pci_data:     .asciz  "PCI data "
s_triple:       .asciz  "triple"
s_mmio_read:    .asciz  "MMIO read "
s_pio_read:     .asciz  "PIO read "
s_triple_msg:   .asciz  "TRIPLE"
s_bad_mode:     .asciz  "unknown-fault-mode"

        .text
        .globl  guest_main
guest_main:
        pushq   %rbx
        leaq    s_key(%rip), %rdi
        call    cmdline_value
        movq    %rax, %rbx
        testq   %rbx, %rbx
        jz      do_all
        movq    %rbx, %rdi
        leaq    s_all(%rip), %rsi
        call    token_eq
        testl   %eax, %eax
        jnz     do_all
        movq    %rbx, %rdi
        leaq    s_mmio(%rip), %rsi
        call    token_eq
        testl   %eax, %eax
        jnz     only_mmio
        movq    %rbx, %rdi
        leaq    s_pio(%rip), %rsi
        call    token_eq
        testl   %eax, %eax
        jnz     only_pio
        movq    %rbx, %rdi
        leaq    s_pci(%rip), %rsi
        call    token_eq
        testl   %eax, %eax
        jnz     only_pci
        movq    %rbx, %rdi
        leaq    s_triple(%rip), %rsi
        call    token_eq
        testl   %eax, %eax
        jnz     do_triple
        leaq    s_bad_mode(%rip), %rdi
        jmp     test_fail

do_all:
        call    do_mmio
        call    do_pio
        jmp     do_triple
only_mmio:
        call    do_mmio
        popq    %rbx
        ret
only_pio:
        call    do_pio
        popq    %rbx
        ret
only_pci:
        call    do_pci
        popq    %rbx
        ret

do_mmio:
        pushq   %rax
        movl    $MMIO_ADDR, %ecx
        movl    $0x12345678, (%rcx)
        movl    (%rcx), %eax
        pushq   %rax
        leaq    s_mmio_read(%rip), %rdi
        call    puts
        popq    %rdi
        call    put_hex
        call    put_nl
        popq    %rax
        ret

do_pio:
        pushq   %rax
        movw    $0x1234, %dx
        xorl    %eax, %eax
        inb     %dx, %al
        pushq   %rax
        movw    $0x1235, %dx
        movb    $0x5a, %al
        outb    %al, %dx
        leaq    s_pio_read(%rip), %rdi
        call    puts
        popq    %rdi
        call    put_hex
        call    put_nl
        popq    %rax
        ret

do_pci:
        pushq   %rax
        movw    $0xcf8, %dx
        movl    $0x80000000, %eax
        outl    %eax, %dx
        inl     %dx, %eax
        leaq    s_pci_addr(%rip), %rdi
        call    put_port_value
        movw    $0xcfc, %dx
        inl     %dx, %eax
        leaq    s_pci_data(%rip), %rdi
        call    put_port_value
        popq    %rax
        ret

/* put_port_value(RDI = label, EAX = value): prints "<label><hex>". */
put_port_value:
        pushq   %rax
        call    puts
        popq    %rdi
        movl    %edi, %edi
        call    put_hex
        jmp     put_nl

do_triple:
        leaq    s_triple_msg(%rip), %rdi
        call    put_line
        jmp     triple
