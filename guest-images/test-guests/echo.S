/* echo: prints READY, then echoes each line read from COM1 (polled from
 * ring 3) as "ECHO <line>"; the line "quit" ends the test. */
#include "common/defs.h"

#define LINE_MAX 255

        .section .rodata
        .globl  guest_name
guest_name:     .asciz  "echo"
s_ready:        .asciz  "READY"
s_echo:         .asciz  "ECHO "
s_quit:         .asciz  "quit"

        .text
        .globl  guest_main
guest_main:
        pushq   %rbx
        leaq    s_ready(%rip), %rdi
        call    put_line
        xorl    %ebx, %ebx              /* line length */
1:      call    getc_poll
        cmpl    $-1, %eax
        jne     2f
        movl    $20000, %edi            /* nothing waiting: back off a little */
        call    delay_ticks
        jmp     1b
2:      cmpb    $'\r', %al
        je      3f
        cmpb    $'\n', %al
        je      3f
        cmpl    $LINE_MAX, %ebx
        jae     1b                      /* overlong line: drop the excess */
        leaq    line(%rip), %rcx
        movb    %al, (%rcx,%rbx)
        incl    %ebx
        jmp     1b
3:      testl   %ebx, %ebx              /* empty line (e.g. the \n of \r\n) */
        jz      1b
        leaq    line(%rip), %rdi
        movb    $0, (%rdi,%rbx)
        cmpl    $4, %ebx
        jne     4f
        leaq    s_quit(%rip), %rsi
        call    token_eq
        testl   %eax, %eax
        jnz     9f
4:      leaq    s_echo(%rip), %rdi
        call    puts
        leaq    line(%rip), %rdi
        call    put_line
        xorl    %ebx, %ebx
        jmp     1b
9:      popq    %rbx
        ret

        .bss
line:   .skip   LINE_MAX + 1
