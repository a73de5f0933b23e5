/* syscall: tells in which ring a 64-bit SYSCALL from ring 3 arrives. LSTAR is
 * set (through SVC_SYSCALL_SETUP) to `landing`, on a user page, so the entry
 * code runs whatever the host does: it reads CS, then goes back to ring 3
 * with SYSRETQ if it runs in ring 0, or jumps to RCX if it is still in ring 3
 * (the misdelivery of software-nested KVM that Ember's SYSCALL repair fixes
 * for Linux guests). This is the probe that could tell, at start, whether a
 * host has the bug (docs/usage.md).
 *
 * Output: EMBER-TEST syscall ring=<0|3> rcx=<ok|bad>
 */
#include "common/defs.h"

        .section .rodata
        .globl  guest_name
guest_name:     .asciz  "syscall"
s_ring:         .asciz  "EMBER-TEST syscall ring="
s_rcx_ok:       .asciz  " rcx=ok"
s_rcx_bad:      .asciz  " rcx=bad"

        .text
        .globl  guest_main
guest_main:
        pushq   %rbx
        pushq   %r12
        pushq   %r13
        leaq    landing(%rip), %rdi
        movl    $SVC_SYSCALL_SETUP, %eax
        call    svc
        xorl    %r12d, %r12d
        syscall
after_syscall:
        /* R12 = CS seen at LSTAR, R13 = RCX seen there */
        leaq    s_ring(%rip), %rdi
        call    puts
        movq    %r12, %rdi
        andq    $3, %rdi
        call    put_dec
        leaq    s_rcx_ok(%rip), %rdi
        leaq    after_syscall(%rip), %rax
        cmpq    %rax, %r13
        je      1f
        leaq    s_rcx_bad(%rip), %rdi
1:      call    puts
        call    put_nl
        popq    %r13
        popq    %r12
        popq    %rbx
        ret

/* The SYSCALL entry (LSTAR). RCX = return RIP, R11 = RFLAGS. */
landing:
        movw    %cs, %r12w
        movq    %rcx, %r13
        testb   $3, %r12b
        jnz     1f
        sysretq
1:      jmp     *%rcx
