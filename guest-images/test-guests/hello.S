/* hello: prints a greeting. */
#include "common/defs.h"

        .section .rodata
        .globl  guest_name
guest_name:     .asciz  "hello"
s_hello:        .asciz  "Hello from the hello guest"

        .text
        .globl  guest_main
guest_main:
        pushq   %rax
        leaq    s_hello(%rip), %rdi
        call    put_line
        popq    %rax
        ret
