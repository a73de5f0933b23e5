/* Ring-3 virtio-mmio helpers shared by the device guests that came after blk
 * and net (rng, vsock): device set-up with VERSION_1 only, split queues of
 * VQ_SIZE entries laid out in 3 pages (descriptors, avail at +4096, used at
 * +8192), posting single-descriptor buffers, and polling the used ring. The
 * avail rings carry VIRTQ_AVAIL_F_NO_INTERRUPT: the guests poll. */
#include "common/defs.h"

#define VQ_SIZE      16
#define VQ_AVAIL     4096
#define VQ_USED      8192
#define VQ_TIMEOUT   30000000000     /* TSC ticks to wait for a used entry */

        .section .rodata
e_vmagic:       .asciz  "bad-magic-or-version"
e_vid:          .asciz  "wrong-device-id"
e_vv1:          .asciz  "no-version-1"
e_vfeat:        .asciz  "features-not-ok"
e_vqmax:        .asciz  "queue-too-small"
e_vreset:       .asciz  "device-needs-reset"
e_vtimeout:     .asciz  "used-ring-timeout"

        .text
/* virtio_setup(RDI = register base, ESI = device id, RDX = queue memory
 * (ECX queues of 3 pages each, page aligned), ECX = number of queues):
 * reset, ACKNOWLEDGE|DRIVER, VERSION_1, FEATURES_OK, every queue, DRIVER_OK.
 * Fails the test on any refusal. */
        .globl  virtio_setup
virtio_setup:
        cmpl    $0x74726976, 0x000(%rdi)
        jne     1f
        cmpl    $2, 0x004(%rdi)
        jne     1f
        cmpl    %esi, 0x008(%rdi)
        jne     2f
        movl    $0, 0x070(%rdi)
        movl    $1, 0x070(%rdi)
        movl    $3, 0x070(%rdi)
        movl    $1, 0x014(%rdi)
        testl   $1, 0x010(%rdi)                 /* VERSION_1 = bit 32 */
        jz      3f
        movl    $0, 0x024(%rdi)
        movl    $0, 0x020(%rdi)
        movl    $1, 0x024(%rdi)
        movl    $1, 0x020(%rdi)
        movl    $0xb, 0x070(%rdi)
        testl   $8, 0x070(%rdi)
        jz      4f
        xorl    %esi, %esi
5:      cmpl    %ecx, %esi
        jae     6f
        movl    %esi, 0x030(%rdi)               /* QueueSel */
        cmpl    $VQ_SIZE, 0x034(%rdi)
        jb      7f
        movl    $VQ_SIZE, 0x038(%rdi)
        movl    %edx, 0x080(%rdi)
        movl    $0, 0x084(%rdi)
        leal    VQ_AVAIL(%rdx), %eax
        movl    %eax, 0x090(%rdi)
        movl    $0, 0x094(%rdi)
        leal    VQ_USED(%rdx), %eax
        movl    %eax, 0x0a0(%rdi)
        movl    $0, 0x0a4(%rdi)
        movw    $1, VQ_AVAIL(%rdx)              /* VIRTQ_AVAIL_F_NO_INTERRUPT */
        movl    $1, 0x044(%rdi)
        addq    $3 * 4096, %rdx
        incl    %esi
        jmp     5b
6:      movl    $0xf, 0x070(%rdi)
        testl   $0x40, 0x070(%rdi)              /* DEVICE_NEEDS_RESET */
        jnz     8f
        ret
1:      leaq    e_vmagic(%rip), %rdi
        jmp     test_fail
2:      leaq    e_vid(%rip), %rdi
        jmp     test_fail
3:      leaq    e_vv1(%rip), %rdi
        jmp     test_fail
4:      leaq    e_vfeat(%rip), %rdi
        jmp     test_fail
7:      leaq    e_vqmax(%rip), %rdi
        jmp     test_fail
8:      leaq    e_vreset(%rip), %rdi
        jmp     test_fail

/* vq_post(RDI = queue memory, ESI = descriptor index (taken mod VQ_SIZE), RDX = buffer address,
 * ECX = length, R8D = descriptor flags (2 = device writes)): one-descriptor
 * chain published in the avail ring (the device is not notified). */
        .globl  vq_post
vq_post:
        andl    $VQ_SIZE - 1, %esi              /* descriptor index mod the size */
        movl    %esi, %eax
        shll    $4, %eax
        movq    %rdx, (%rdi,%rax)
        movl    %ecx, 8(%rdi,%rax)
        movw    %r8w, 12(%rdi,%rax)
        movw    $0, 14(%rdi,%rax)
        movzwl  VQ_AVAIL + 2(%rdi), %eax
        movl    %eax, %ecx
        andl    $VQ_SIZE - 1, %ecx
        movw    %si, VQ_AVAIL + 4(%rdi,%rcx,2)
        incl    %eax
        movw    %ax, VQ_AVAIL + 2(%rdi)         /* x86 keeps store order */
        ret

/* vq_notify(RDI = register base, ESI = queue index). */
        .globl  vq_notify
vq_notify:
        mfence
        movl    %esi, 0x050(%rdi)
        ret

/* vq_used_idx(RDI = queue memory) -> EAX = the used ring's idx. */
        .globl  vq_used_idx
vq_used_idx:
        movzwl  VQ_USED + 2(%rdi), %eax
        ret

/* vq_used_len(RDI = queue memory, ESI = used slot number) -> EAX = length,
 * EDX = descriptor id of that used entry. */
        .globl  vq_used_len
vq_used_len:
        andl    $VQ_SIZE - 1, %esi
        movl    VQ_USED + 4(%rdi,%rsi,8), %edx
        movl    VQ_USED + 8(%rdi,%rsi,8), %eax
        ret

/* vq_wait(RDI = queue memory, ESI = used idx to wait for): polls until the
 * used idx reaches ESI (compared mod 2^16); fails after VQ_TIMEOUT ticks. */
        .globl  vq_wait
vq_wait:
        pushq   %rbx
        pushq   %r12
        pushq   %r13
        movq    %rdi, %rbx
        movl    %esi, %r12d
        call    rdtsc64
        movq    %rax, %r13
1:      movzwl  VQ_USED + 2(%rbx), %eax
        subl    %r12d, %eax
        testw   %ax, %ax
        jns     9f                              /* used idx - target >= 0 (16-bit) */
        pause
        call    rdtsc64
        subq    %r13, %rax
        movabsq $VQ_TIMEOUT, %rcx
        cmpq    %rcx, %rax
        jb      1b
        leaq    e_vtimeout(%rip), %rdi
        jmp     test_fail
9:      popq    %r13
        popq    %r12
        popq    %rbx
        ret
