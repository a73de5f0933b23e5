/*
 * poweroff: follows the ACPI tables the way a kernel does (RSDP from the
 * boot info -> XSDT -> FADT), prints what it found, then writes the S5 sleep
 * value with SLP_EN to the FADT's PM1a control block. On Ember that powers
 * the VM off: `ember` exits 0 with the power-off outcome. If the guest is
 * still running ~10^8 TSC ticks later, it fails and resets.
 */
#include "common/defs.h"

/* PM1_CNT: SLP_TYP 5 (the DSDT's _S5_) in bits 10-12, SLP_EN (bit 13), SCI_EN (bit 0). */
#define PM1_CNT_S5      ((5 << 10) | (1 << 13) | 1)
/* FADT: PM1a_CNT_BLK, a 32-bit I/O port number. */
#define FADT_PM1A_CNT   64

        .section .rodata
        .globl  guest_name
guest_name:     .asciz  "poweroff"
s_rsdp:         .asciz  "RSDP "
s_fadt:         .asciz  "FADT "
s_pm1:          .asciz  "PM1A_CONTROL "
s_done:         .asciz  "done"
s_no_rsdp:      .asciz  "no-rsdp"
s_bad_rsdp:     .asciz  "bad-rsdp"
s_bad_xsdt:     .asciz  "bad-xsdt"
s_no_fadt:      .asciz  "no-fadt"
s_no_pm1:       .asciz  "no-pm1a-control-block"
s_ignored:      .asciz  "poweroff-ignored"

        .text
        .globl  guest_main
guest_main:
        pushq   %rbx
        pushq   %r12
        pushq   %r13                    /* RSP 16-byte aligned from here */
        /* RSDP: PVH rsdp_paddr (start info +0x20), zero page acpi_rsdp_addr (+0x70). */
        movq    boot_info(%rip), %rsi
        movq    0x70(%rsi), %rbx
        cmpl    $PROTO_PVH, boot_protocol(%rip)
        jne     1f
        movq    0x20(%rsi), %rbx
1:      leaq    s_no_rsdp(%rip), %rdi
        testq   %rbx, %rbx
        jz      fail
        leaq    s_rsdp(%rip), %rdi
        call    puts
        movq    %rbx, %rdi
        call    put_hex
        call    put_nl
        leaq    s_bad_rsdp(%rip), %rdi
        movabsq $0x2052545020445352, %rax       /* "RSD PTR " */
        cmpq    %rax, (%rbx)
        jne     fail
        cmpb    $2, 15(%rbx)            /* revision 2: has the XSDT address */
        jb      fail
        movq    24(%rbx), %r12          /* XSDT */
        leaq    s_bad_xsdt(%rip), %rdi
        cmpl    $0x54445358, (%r12)     /* "XSDT" */
        jne     fail
        movl    4(%r12), %r13d
        addq    %r12, %r13              /* end of the XSDT */
        addq    $36, %r12               /* first 64-bit entry */
2:      leaq    s_no_fadt(%rip), %rdi
        cmpq    %r13, %r12
        jae     fail
        movq    (%r12), %rbx
        addq    $8, %r12
        cmpl    $0x50434146, (%rbx)     /* "FACP" */
        jne     2b
        leaq    s_fadt(%rip), %rdi
        call    puts
        movq    %rbx, %rdi
        call    put_hex
        call    put_nl
        leaq    s_no_pm1(%rip), %rdi
        movl    FADT_PM1A_CNT(%rbx), %r12d
        testl   %r12d, %r12d
        jz      fail
        leaq    s_pm1(%rip), %rdi
        call    puts
        movq    %r12, %rdi
        call    put_hex
        call    put_nl
        /* done now: the write below ends the VM. */
        call    put_prefix
        leaq    s_done(%rip), %rdi
        call    put_line
        movl    %r12d, %edx
        movw    $PM1_CNT_S5, %ax
        outw    %ax, %dx
        movq    $100000000, %rdi
        call    delay_ticks
        leaq    s_ignored(%rip), %rdi
fail:
        jmp     test_fail
