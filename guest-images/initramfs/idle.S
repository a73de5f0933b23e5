/*
 * /init of initramfs-idle.cpio: spin on `pause` forever and make no system
 * call at all. On software-nested (PVM) hosts guest userspace cannot make
 * system calls, but a live init keeps the kernel running (timer ticks,
 * in-kernel networking, block I/O), which is all kernel-only checks need.
 *
 * Built by scripts/build-guest-images: gcc -nostdlib -static -no-pie.
 */
	.globl	_start
	.text
_start:
	pause
	jmp	_start

	.section .note.GNU-stack, "", @progbits
