/* kbd: prints READY, then polls the i8042 (status port 0x64, OBF) and prints
 * each byte read from the data port 0x60 as "KBD <hex>". When the last four
 * bytes are Ctrl, Alt and Del pressed in scancode set 2 (0x14 0x11 0xe0 0x71)
 * it prints CTRL-ALT-DEL and ends the test (done, then reset). */
#include "common/defs.h"

#define I8042_DATA      0x60
#define I8042_STATUS    0x64
#define CTRL_ALT_DEL    0x1411e071

        .section .rodata
        .globl  guest_name
guest_name:     .asciz  "kbd"
s_ready:        .asciz  "READY"
s_kbd:          .asciz  "KBD "
s_cad:          .asciz  "CTRL-ALT-DEL"

        .text
        .globl  guest_main
guest_main:
        pushq   %rbx
        pushq   %r12
        pushq   %rax                    /* keep the stack 16-byte aligned */
        leaq    s_ready(%rip), %rdi
        call    put_line
        xorl    %ebx, %ebx              /* the last four bytes read */
1:      movw    $I8042_STATUS, %dx
        inb     %dx, %al
        testb   $1, %al                 /* OBF: a byte waits */
        jnz     2f
        movl    $20000, %edi            /* nothing waiting: back off a little */
        call    delay_ticks
        jmp     1b
2:      movw    $I8042_DATA, %dx
        xorl    %eax, %eax
        inb     %dx, %al
        movzbl  %al, %r12d
        shll    $8, %ebx
        orl     %r12d, %ebx
        leaq    s_kbd(%rip), %rdi
        call    puts
        movl    %r12d, %edi
        call    put_hex
        call    put_nl
        cmpl    $CTRL_ALT_DEL, %ebx
        jne     1b
        leaq    s_cad(%rip), %rdi
        call    put_line
        popq    %rax
        popq    %r12
        popq    %rbx
        ret
