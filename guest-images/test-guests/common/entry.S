/*
 * Ring-0 part shared by every test guest: boot entries, GDT/TSS/IDT,
 * page tables, exception and service handlers, AP start-up path.
 *
 * On a PVM host CPL-0 code is emulated at about 1 us per instruction, so
 * this file keeps ring-0 work to a few dozen instructions per CPU: the page
 * tables, IDT, GDT and TSSes are all built at assembly/link time, the CPU
 * only loads them. All real work happens in ring 3 (common/lib.S and the
 * guest files), entered with IOPL=3 so that ring 3 may do port I/O itself.
 *
 * Port I/O from ring 3: where IOPL=3 is honoured (hardware KVM) it runs
 * natively. PVM forces the underlying RFLAGS.IOPL to 0, so there `in`/`out`
 * in ring 3 raise #GP; the #GP handler below then performs the access in
 * ring 0, sets `iopl_trapped`, and resumes after the instruction. Ring 3
 * sees that flag and sends whole output lines through SVC_WRITE instead.
 *
 * Entries:
 *   pvh_entry      32-bit protected mode, paging off, EBX = hvm_start_info
 *                  (advertised through the Xen PVH ELF note below).
 *   linux64_entry  ELF e_entry; 64-bit long mode with an identity map,
 *                  RSI = Linux zero page (struct boot_params).
 *   ap_trampoline  16-bit real-mode code copied to AP_TRAMPOLINE by the smp
 *                  guest and started by INIT/SIPI/SIPI.
 *
 * Everything up to `text_r0_end` and the IDT/TSS data must lie below
 * 0x110000 (asserted in link.ld): gate and descriptor address fields are
 * emitted as 16-bit offsets from 0x100000.
 */
#include "defs.h"

#define IMAGE_BASE 0x100000

/* ---------------------------------------------------------------- PVH note */
        .section .note.Xen, "a"
        .p2align 2
        .long   4                       /* namesz: "Xen\0" */
        .long   4                       /* descsz */
        .long   18                      /* XEN_ELFNOTE_PHYS32_ENTRY */
        .asciz  "Xen"
        .long   pvh_entry               /* 32-bit physical entry */

        .section .text.entry, "ax"

/* ------------------------------------------------------------- PVH entry */
        .code32
        .globl  pvh_entry
pvh_entry:
        cli
        movl    %ebx, %esi              /* start info; survives into 64-bit */
        xorl    %ebp, %ebp              /* role 0: BSP booted via PVH */
        /* fall through */

/* 32-bit protected mode -> long mode. EBP = role (0 PVH BSP, 2 AP). */
pm32_to_long:
        lgdt    gdtr
        movl    $0x20, %eax             /* CR4: PAE only */
        movl    %eax, %cr4
        movl    $pml4, %eax
        movl    %eax, %cr3
        movl    $0xc0000080, %ecx       /* EFER.LME */
        rdmsr
        orl     $0x100, %eax
        wrmsr
        movl    %cr0, %eax
        orl     $0x80000001, %eax       /* PG | PE */
        movl    %eax, %cr0
        ljmp    $SEL_CODE64, $long_from32

        .code64
long_from32:
        cmpl    $2, %ebp
        je      ap_long
        movl    %esi, %esi              /* zero-extend start info address */
        jmp     common64

/* ------------------------------------------------ Linux 64-bit boot entry */
        .globl  linux64_entry
linux64_entry:
        cli
        movl    $PROTO_LINUX64, %ebp    /* RSI = zero page, kept */
        lgdt    gdtr(%rip)
        movl    $0x20, %eax             /* CR4: PAE only (no SMEP/SMAP/PGE) */
        movq    %rax, %cr4
        leaq    pml4(%rip), %rax
        movq    %rax, %cr3
        pushq   $SEL_CODE64             /* reload CS from our GDT */
        leaq    common64(%rip), %rax
        pushq   %rax
        lretq

/* ------------------------------------------------- BSP and AP: ring 0 */
/* BSP: EBP = protocol, RSI = boot info (start info or zero page). */
common64:
        xorl    %edi, %edi              /* CPU index 0 */
        jmp     cpu_setup

ap_long:
        movl    $1, %edi
        lock xaddl %edi, next_cpu(%rip) /* EDI = this AP's CPU index */
        cmpl    $MAX_CPUS, %edi
        jae     halt_forever

/* EDI = CPU index. Loads segments, TR, IDT, this CPU's stacks, and
 * iretq's to ring 3: ring3_start(EDI = protocol, RSI = info) on the BSP,
 * ap_ring3_start(EDI = CPU index) on an AP. */
cpu_setup:
        movl    $SEL_DATA, %eax
        movl    %eax, %ds
        movl    %eax, %es
        movl    %eax, %ss
        xorl    %eax, %eax
        movl    %eax, %fs
        movl    %eax, %gs
        lidt    idtr(%rip)
        movl    %edi, %eax
        shll    $4, %eax
        addl    $SEL_TSS0, %eax
        ltr     %ax
        leal    1(%rdi), %eax
        shll    $12, %eax               /* (i+1) * KSTACK_SIZE */
        leaq    kstacks(%rip), %rsp
        addq    %rax, %rsp
        shll    $2, %eax                /* (i+1) * USTACK_SIZE */
        leaq    ustacks(%rip), %rcx
        addq    %rcx, %rax
        pushq   $SEL_UDATA
        pushq   %rax
        pushq   $USER_RFLAGS
        pushq   $SEL_UCODE
        leaq    ring3_start(%rip), %rax
        testl   %edi, %edi
        jz      1f
        leaq    ap_ring3_start(%rip), %rax
1:      pushq   %rax
        testl   %edi, %edi
        jnz     2f
        movl    %ebp, %edi
2:      iretq

/* --------------------------------------------- AP real-mode trampoline */
/* Copied to AP_TRAMPOLINE (CS = 0x1000, IP = 0) by the smp guest. */
        .code16
        .globl  ap_trampoline, ap_trampoline_end
ap_trampoline:
        cli
        movw    %cs, %ax
        movw    %ax, %ds
        lgdtl   ap_tramp_gdtr - ap_trampoline
        movl    %cr0, %eax
        orl     $1, %eax
        movl    %eax, %cr0
        ljmpl   $SEL_CODE32, $ap_pm32
        .p2align 3
ap_tramp_gdtr:
        .word   gdt_end - gdt - 1
        .long   gdt
ap_trampoline_end:

        .code32
ap_pm32:
        movl    $SEL_DATA, %eax
        movl    %eax, %ds
        movl    %eax, %es
        movl    %eax, %ss
        movl    $2, %ebp
        jmp     pm32_to_long

/* ------------------------------------------------ exceptions & services */
        .code64
.macro ISR n, has_err
isr_\n:
        .if \has_err == 0
        pushq   $0
        .endif
        pushq   $\n
        jmp     isr_common
.endm
        ISR 0,0
        ISR 1,0
        ISR 2,0
        ISR 3,0
        ISR 4,0
        ISR 5,0
        ISR 6,0
        ISR 7,0
        ISR 8,1
        ISR 9,0
        ISR 10,1
        ISR 11,1
        ISR 12,1
        /* 13 (#GP) is isr_gp below */
        ISR 14,1
        ISR 15,0
        ISR 16,0
        ISR 17,1
        ISR 18,0
        ISR 19,0
        ISR 20,0
        ISR 21,1
        ISR 22,0
        ISR 23,0
        ISR 24,0
        ISR 25,0
        ISR 26,0
        ISR 27,0
        ISR 28,0
        ISR 29,1
        ISR 30,1
        ISR 31,0

/* #GP. Stack: error, RIP, CS, RFLAGS, RSP, SS. If ring 3 faulted on an
 * `in`/`out` with the port in DX (opcodes EC ED EE EF, optional 66 prefix)
 * because the host does not honour IOPL, do the access here and resume. */
isr_gp:
        testb   $3, 16(%rsp)
        jz      1f
        pushq   %rcx
        movq    16(%rsp), %rcx          /* faulting RIP */
        movzwl  (%rcx), %ecx
        cmpb    $0xee, %cl
        je      gp_outb
        cmpb    $0xec, %cl
        je      gp_inb
        cmpb    $0xef, %cl
        je      gp_outl
        cmpb    $0xed, %cl
        je      gp_inl
        cmpw    $0xef66, %cx
        je      gp_outw
        cmpw    $0xed66, %cx
        je      gp_inw
        popq    %rcx
1:      pushq   $13
        jmp     isr_common
gp_outb:
        outb    %al, %dx
        jmp     gp_done1
gp_inb:
        inb     %dx, %al
        jmp     gp_done1
gp_outl:
        outl    %eax, %dx
        jmp     gp_done1
gp_inl:
        inl     %dx, %eax
        jmp     gp_done1
gp_outw:
        outw    %ax, %dx
        jmp     gp_done2
gp_inw:
        inw     %dx, %ax
gp_done2:
        incq    16(%rsp)
gp_done1:
        incq    16(%rsp)
        movb    $1, iopl_trapped(%rip)
        popq    %rcx
        addq    $8, %rsp                /* error code */
        iretq

/* Vectors 32-255: an interrupt nobody asked for (PVM keeps interrupts
 * enabled in user mode whatever RFLAGS.IF says). EOI the LAPIC, count it,
 * and return. */
isr_irq:
        pushq   %rax
        movl    $LAPIC_BASE + 0xb0, %eax
        movl    $0, (%rax)
        incl    spurious_irqs(%rip)
        popq    %rax
        iretq

/* Stack: vector, error code, RIP, CS, RFLAGS, RSP, SS. */
isr_common:
        testb   $3, 24(%rsp)
        jz      triple_fault            /* fault in ring 0: nothing sane left */
        cmpq    $6, (%rsp)
        jne     user_fault
        leaq    svc_gate(%rip), %rcx    /* ud2 at svc_gate = service call */
        cmpq    %rcx, 16(%rsp)
        jne     user_fault
        cmpl    $SVC_WRITE, %eax
        je      svc_write
        cmpl    $SVC_NOP, %eax
        je      svc_return
        cmpl    $SVC_PIO_READS, %eax
        je      svc_pio_reads
        cmpl    $SVC_R0_SPIN, %eax
        je      svc_r0_spin
        cmpl    $SVC_SYSCALL_SETUP, %eax
        je      svc_syscall_setup
        cmpl    $SVC_HALT, %eax
        je      halt_forever
        cmpl    $SVC_TRIPLE, %eax
        je      triple_fault
user_fault:
        /* Resume ring 3 in user_exception(vector, error, rip). */
        popq    %rdi
        popq    %rsi
        movq    (%rsp), %rdx
        leaq    user_exception(%rip), %rcx
        movq    %rcx, (%rsp)
        iretq

/* SVC_WRITE(RDI = buffer, RSI = length): write bytes to COM1, each after
 * LSR.THRE is set (bounded wait). 7 instructions and 2 port exits a byte. */
svc_write:
        xchgq   %rdi, %rsi              /* RSI = buffer, RDI = remaining */
        testq   %rdi, %rdi
        jz      svc_return
1:      movw    $COM1 + 5, %dx
        movl    $100000, %ecx
2:      inb     %dx, %al
        testb   $0x20, %al
        loopz   2b
        movw    $COM1, %dx
        lodsb
        outb    %al, %dx
        decq    %rdi
        jnz     1b

/* SVC_PIO_READS(RDI = count, a multiple of 16; DX = port): `inb` count
 * times in ring 0, 16 per loop turn, for the exit-cost benchmark (ring-3 port
 * I/O traps to #GP on PVM; on PVM ring-0 code is emulated, so the loop keeps
 * its own overhead to 1/8 instruction per read). SVC_R0_SPIN: the same loop
 * with a register move instead of the read (the cost of the loop alone). */
svc_pio_reads:
        shrq    $4, %rdi
        jz      svc_return
1:      .rept   16
        inb     %dx, %al
        .endr
        decq    %rdi
        jnz     1b
        jmp     svc_return
svc_r0_spin:
        shrq    $4, %rdi
        jz      svc_return
1:      .rept   16
        movl    %edx, %eax
        .endr
        decq    %rdi
        jnz     1b
        /* fall through */

/* SVC_SYSCALL_SETUP(RDI = LSTAR): SYSCALL on, with SYSRET to SEL_UCODE/SEL_UDATA
 * (STAR[63:48] + 16 and + 8) and kernel CS SEL_CODE64; no flags masked. */
svc_syscall_setup:
        movl    $0xc0000080, %ecx       /* EFER */
        rdmsr
        orl     $1, %eax                /* SCE */
        wrmsr
        movl    $0xc0000081, %ecx       /* STAR */
        xorl    %eax, %eax
        movl    $((SEL_UDATA - 8) << 16) | SEL_CODE64, %edx
        wrmsr
        movl    $0xc0000082, %ecx       /* LSTAR */
        movl    %edi, %eax
        movq    %rdi, %rdx
        shrq    $32, %rdx
        wrmsr
        movl    $0xc0000084, %ecx       /* SFMASK */
        xorl    %eax, %eax
        xorl    %edx, %edx
        wrmsr
        /* fall through */

svc_return:
        addq    $2, 16(%rsp)            /* skip the ud2 */
        addq    $16, %rsp
        iretq

        .globl  triple_fault
triple_fault:
        lidt    zero_idtr(%rip)
        ud2
        jmp     triple_fault

halt_forever:
        cli
1:      hlt
        jmp     1b
        .globl  text_r0_end
text_r0_end:

/* ------------------------------------------------------------------ data */

/* Page tables: identity map of 0-4 GiB with 2 MiB pages, all
 * user-accessible (so ring 3 reaches RAM, low BIOS areas, LAPIC, MMIO).
 * The last GiB (MMIO gap) is mapped PCD|PWT. Built at assembly time. */
        .section .data.pagetables, "aw"
        .p2align 12
pml4:
        .quad   pdpt + 0x7              /* P | RW | US */
        .fill   511, 8, 0
pdpt:
        .quad   pd + 0x0000 + 0x7
        .quad   pd + 0x1000 + 0x7
        .quad   pd + 0x2000 + 0x7
        .quad   pd + 0x3000 + 0x7
        .fill   508, 8, 0
pd:
        .set    i, 0
        .rept   2048
        .if     i < 1536
        .quad   (i << 21) | 0x87        /* P | RW | US | PS */
        .else
        .quad   (i << 21) | 0x9f        /* ... | PWT | PCD */
        .endif
        .set    i, i + 1
        .endr

/* IDT: 256 interrupt gates, ring-0 64-bit code, all handlers in 0x10xxxx. */
        .section .data.idt, "aw"
        .p2align 4
.macro GATE handler
        .word   \handler - IMAGE_BASE
        .word   SEL_CODE64
        .byte   0, 0x8e
        .word   IMAGE_BASE >> 16
        .long   0, 0
.endm
idt:
        .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12
        GATE    isr_\n
        .endr
        GATE    isr_gp
        .irp n, 14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        GATE    isr_\n
        .endr
        .rept   256 - 32
        GATE    isr_irq
        .endr
idt_end:

/* TSS i: RSP0 = top of ring-0 stack i; no I/O bitmap. */
        .p2align 7
tss_array:
        .set    i, 0
        .rept   MAX_CPUS
        .long   0
        .quad   kstacks + (i + 1) * KSTACK_SIZE
        .fill   102 - 12, 1, 0
        .word   104                     /* I/O map base > limit: no bitmap */
        .fill   TSS_STRIDE - 104, 1, 0
        .set    i, i + 1
        .endr
        .globl  tss_array_end
tss_array_end:

        .p2align 4
gdt:
        .quad   0
        .quad   0x00cf9b000000ffff      /* 0x08 code32 ring 0 */
        .quad   0x00af9b000000ffff      /* 0x10 code64 ring 0 */
        .quad   0x00cf93000000ffff      /* 0x18 data ring 0 */
        .quad   0x00cff3000000ffff      /* 0x20 data ring 3 */
        .quad   0x00affb000000ffff      /* 0x28 code64 ring 3 */
        .set    i, 0                    /* 0x30 + 16*i: TSS of CPU i */
        .rept   MAX_CPUS
        .word   103
        .word   tss_array + i * TSS_STRIDE - IMAGE_BASE
        .byte   IMAGE_BASE >> 16, 0x89, 0, 0
        .long   0, 0
        .set    i, i + 1
        .endr
gdt_end:

        .p2align 3
        .word   0
gdtr:
        .word   gdt_end - gdt - 1
        .quad   gdt
        .word   0,0,0
idtr:
        .word   idt_end - idt - 1
        .quad   idt
        .word   0,0,0
zero_idtr:
        .word   0
        .quad   0

        .globl  next_cpu, iopl_trapped, spurious_irqs, ap_trampoline_len
ap_trampoline_len:
        .long   ap_trampoline_end - ap_trampoline
next_cpu:
        .long   1                       /* CPU index of the next AP */
spurious_irqs:
        .long   0
iopl_trapped:
        .byte   0

        .bss
        .p2align 12
        .globl  kstacks, ustacks
kstacks:
        .skip   MAX_CPUS * KSTACK_SIZE
ustacks:
        .skip   MAX_CPUS * USTACK_SIZE
