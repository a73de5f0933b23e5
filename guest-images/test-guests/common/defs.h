/* Shared constants for the Ember test guests (included by every .S file). */
#ifndef TEST_GUESTS_DEFS_H
#define TEST_GUESTS_DEFS_H

/* GDT selectors (see gdt in common/entry.S). */
#define SEL_CODE32   0x08            /* ring-0 32-bit code (PVH entry, AP trampoline) */
#define SEL_CODE64   0x10            /* ring-0 64-bit code */
#define SEL_DATA     0x18            /* ring-0 data */
#define SEL_UDATA    (0x20 | 3)      /* ring-3 data */
#define SEL_UCODE    (0x28 | 3)      /* ring-3 64-bit code */
#define SEL_TSS0     0x30            /* TSS of CPU 0; CPU i uses SEL_TSS0 + 16*i */

#define MAX_CPUS     64
#define KSTACK_SIZE  4096            /* per-CPU ring-0 stack (exceptions only) */
#define USTACK_SIZE  16384           /* per-CPU ring-3 stack */
#define TSS_STRIDE   128             /* bytes per TSS slot (a TSS is 104 bytes) */

/* RFLAGS for ring 3: IOPL=3 (bits 12-13), IF=0, reserved bit 1. */
#define USER_RFLAGS  0x3002

/* Ring-3 -> ring-0 services: `ud2` at svc_gate with the number in EAX. */
#define SVC_TRIPLE   0               /* load a zero-limit IDT and fault: triple fault */
#define SVC_HALT     1               /* cli; hlt forever */
#define SVC_NOP      2               /* return at once (used to time a round trip) */
#define SVC_WRITE    3               /* write RSI bytes at RDI to COM1 from ring 0 */
#define SVC_PIO_READS 4              /* RDI (multiple of 16) `inb` from port DX in ring 0 */
#define SVC_R0_SPIN  5               /* the same loop without port access (baseline) */
#define SVC_SYSCALL_SETUP 6          /* EFER.SCE, STAR (user 0x2b/0x23, kernel 0x10), LSTAR = RDI, SFMASK 0 */

/* Boot protocols, as passed from the entry code to ring 3. */
#define PROTO_PVH     0
#define PROTO_LINUX64 1

/* Guest-physical addresses used by the guests. */
#define AP_TRAMPOLINE 0x10000        /* SIPI vector 0x10 */
#define LAPIC_BASE    0xfee00000
#define BOOT_TIMER    0xc0000000     /* Ember's boot-timer register (MMIO) */
#define BOOT_TIMER_MAGIC 123         /* the value that marks "init started" */
#define COM1          0x3f8

#endif
