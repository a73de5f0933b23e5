/* rng: drives a virtio-rng device over virtio-mmio from ring 3, by polling.
 * It finds the device as the first "@0x<base>" on its command line, sets up
 * queue 0 (common/virtio.S), asks twice for 64 bytes of entropy and checks
 * that the device filled both buffers and that they differ (a device that
 * hands out constant or no bytes fails).
 *
 * Output (see docs/test-guests-protocol.md):
 *   RNG got=<len> fnv=<hex>      (twice)
 *   RNG distinct ok
 */
#include "common/defs.h"

#define LEN          64

        .section .rodata
        .globl  guest_name
guest_name:     .asciz  "rng"
s_got:          .asciz  "RNG got="
s_fnv:          .asciz  " fnv="
s_ok:           .asciz  "RNG distinct ok"
e_nodev:        .asciz  "no-virtio-mmio-device"
e_short:        .asciz  "short-read"
e_same:         .asciz  "rng-constant"

        .data
        .p2align 3
dev:            .quad   0

        .bss
        .p2align 12
queue:          .skip   3 * 4096
buf_a:          .skip   LEN
buf_b:          .skip   LEN

        .text
/* request(ESI = index 0/1, RDX = buffer): one request, waited for, printed. */
request:
        pushq   %rbx
        pushq   %r12
        movl    %esi, %ebx
        movq    %rdx, %r12
        leaq    queue(%rip), %rdi
        movl    $LEN, %ecx
        movl    $2, %r8d
        call    vq_post
        movq    dev(%rip), %rdi
        xorl    %esi, %esi
        call    vq_notify
        leaq    queue(%rip), %rdi
        leal    1(%rbx), %esi
        call    vq_wait
        leaq    queue(%rip), %rdi
        movl    %ebx, %esi
        call    vq_used_len
        cmpl    $LEN, %eax
        jne     f_short
        pushq   %rax
        leaq    s_got(%rip), %rdi
        call    puts
        popq    %rdi
        call    put_dec
        leaq    s_fnv(%rip), %rdi
        call    puts
        movq    %r12, %rdi
        movl    $LEN, %esi
        call    fnv1a64
        movq    %rax, %rdi
        call    put_hex
        call    put_nl
        popq    %r12
        popq    %rbx
        ret

        .globl  guest_main
guest_main:
        pushq   %rbx
        xorl    %edi, %edi
        call    virtio_mmio_base
        testq   %rax, %rax
        jz      f_nodev
        movq    %rax, dev(%rip)
        movq    %rax, %rdi
        movl    $4, %esi                        /* VIRTIO_ID_RNG */
        leaq    queue(%rip), %rdx
        movl    $1, %ecx
        call    virtio_setup
        xorl    %esi, %esi
        leaq    buf_a(%rip), %rdx
        call    request
        movl    $1, %esi
        leaq    buf_b(%rip), %rdx
        call    request
        /* the two must differ, and neither may be all zero */
        leaq    buf_a(%rip), %rsi
        leaq    buf_b(%rip), %rdi
        movl    $LEN / 8, %ecx
        repe cmpsq
        je      f_same
        leaq    buf_a(%rip), %rdi
        xorl    %eax, %eax
        movl    $LEN / 8, %ecx
        repe scasq
        je      f_same
        leaq    buf_b(%rip), %rdi
        movl    $LEN / 8, %ecx
        repe scasq
        je      f_same
        leaq    s_ok(%rip), %rdi
        call    put_line
        popq    %rbx
        ret

f_nodev:        leaq    e_nodev(%rip), %rdi
                jmp     test_fail
f_short:        leaq    e_short(%rip), %rdi
                jmp     test_fail
f_same:         leaq    e_same(%rip), %rdi
                jmp     test_fail
