/* bootinfo: prints the memory map, command line, initrd (with an FNV-1a 64
 * hash of its contents), the MP-table CPU count and the CMOS clock's date and
 * time registers, all from ring 3. */
#include "common/defs.h"

        .section .rodata
        .globl  guest_name
guest_name:     .asciz  "bootinfo"
s_e820:         .asciz  "E820 "
s_cmdline:      .asciz  "CMDLINE "
s_initrd:       .asciz  "INITRD "
s_none:         .asciz  "none"
s_cpus:         .asciz  "CPUS "
s_initrd_4g:    .asciz  "initrd-beyond-4gib"
s_rtc:          .asciz  "RTC"
/* CMOS registers: year, month, day, hours, minutes, seconds */
rtc_regs:       .byte   9, 8, 7, 4, 2, 0

        .text
        .globl  guest_main
guest_main:
        pushq   %rbx
        pushq   %r12
        pushq   %r13
        /* E820 <addr> <size> <type>, one per memory map entry */
        movq    mm_ptr(%rip), %rbx
        movq    mm_count(%rip), %r12
1:      testq   %r12, %r12
        jz      2f
        leaq    s_e820(%rip), %rdi
        call    puts
        movq    0(%rbx), %rdi
        call    put_hex
        call    put_space
        movq    8(%rbx), %rdi
        call    put_hex
        call    put_space
        movl    16(%rbx), %edi
        call    put_dec
        call    put_nl
        addq    mm_stride(%rip), %rbx
        decq    %r12
        jmp     1b
        /* CMDLINE <text> */
2:      leaq    s_cmdline(%rip), %rdi
        call    puts
        movq    cmdline_ptr(%rip), %rdi
        testq   %rdi, %rdi
        jz      3f
        movl    $4096, %esi
        call    putsn
3:      call    put_nl
        /* INITRD <addr> <size> <fnv1a64> | INITRD none */
        leaq    s_initrd(%rip), %rdi
        call    puts
        cmpl    $0, have_initrd(%rip)
        jne     4f
        leaq    s_none(%rip), %rdi
        call    puts
        jmp     5f
4:      movq    initrd_addr(%rip), %rbx
        movq    initrd_size(%rip), %r12
        leaq    (%rbx,%r12), %rax
        movabsq $0x100000000, %rcx      /* only 0-4 GiB is mapped */
        cmpq    %rcx, %rax
        ja      9f
        movq    %rbx, %rdi
        call    put_hex
        call    put_space
        movq    %r12, %rdi
        call    put_hex
        call    put_space
        movq    %rbx, %rdi
        movq    %r12, %rsi
        call    fnv1a64
        movq    %rax, %rdi
        call    put_hex
5:      call    put_nl
        /* CPUS <n> */
        leaq    s_cpus(%rip), %rdi
        call    puts
        xorl    %edi, %edi
        call    mp_cpus
        movl    %eax, %edi
        call    put_dec
        call    put_nl
        /* RTC <year> <month> <day> <hour> <minute> <second>, as the CMOS
         * registers hold them (BCD: 0x26 is 26) */
        leaq    s_rtc(%rip), %rdi
        call    puts
        leaq    rtc_regs(%rip), %r12
        movl    $6, %r13d
6:      call    put_space
        movzbl  (%r12), %eax
        movw    $0x70, %dx
        outb    %al, %dx
        movw    $0x71, %dx
        inb     %dx, %al
        movzbl  %al, %edi
        call    put_hex
        incq    %r12
        decl    %r13d
        jnz     6b
        call    put_nl
        popq    %r13
        popq    %r12
        popq    %rbx
        ret
9:      call    put_nl
        leaq    s_initrd_4g(%rip), %rdi
        jmp     test_fail
