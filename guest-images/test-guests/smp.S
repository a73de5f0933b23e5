/* smp: the BSP reads the processor entries of the MP table, starts every
 * other CPU with INIT/SIPI/SIPI through the xAPIC ICR (from ring 3: the LAPIC
 * page is mapped user-accessible), and waits until all check in. Every CPU
 * prints "CPU apic=<id>" under a spinlock; the BSP then prints
 * "SMP online=<n> expected=<n>".
 *
 * With "tick=<k>" on the command line the CPUs do not stop there: each counts
 * forever, printing "TICK cpu=<apic id> n=<count> nonce=<hex>" about every
 * TICKS_PERIOD/k TSC ticks (tick=1: 30-100 ms; the benchmark uses a large k). The nonce is the BSP's TSC at start, kept in RAM
 * only: a restored snapshot prints the same nonce and counts on, a reboot
 * would not (the snapshot tests). */
#include "common/defs.h"

#define LAPIC_ID     0x20
#define LAPIC_SVR    0xf0
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310

/* Delays in TSC ticks, sized for TSCs up to ~3 GHz (longer on slower ones). */
#define TICKS_INIT_DELAY 30000000       /* >= 10 ms: INIT -> first SIPI */
#define TICKS_SIPI_DELAY 600000         /* >= 200 us: after each SIPI */
#define TICKS_ICR_WAIT   300000000      /* ICR delivery status, 100 ms */
#define TICKS_AP_TIMEOUT 60000000000    /* all APs online: 20-60 s */
#define TICKS_PERIOD     100000000      /* tick mode: one line per CPU, 30-100 ms */

        .section .rodata
        .globl  guest_name
guest_name:     .asciz  "smp"
s_cpu:          .asciz  "CPU apic="
s_cpus_key:     .asciz  "cpus="
s_smp:          .asciz  "SMP online="
s_expected:     .asciz  " expected="
s_no_mp:        .asciz  "no-mp-table"
s_icr:          .asciz  "icr-busy"
s_timeout:      .asciz  "ap-timeout"
s_tick_key:     .asciz  "tick="
s_tick:         .asciz  "TICK cpu="
s_tick_n:       .asciz  " n="
s_tick_nonce:   .asciz  " nonce="

        .text
        .globl  guest_main
guest_main:
        pushq   %rbx
        pushq   %r12
        pushq   %r13
        pushq   %r14
        pushq   %r15
        call    rdtsc64                 /* the nonce: this boot's TSC */
        movq    %rax, nonce(%rip)
        leaq    s_tick_key(%rip), %rdi
        call    cmdline_value
        testq   %rax, %rax
        jz      0f
        movq    %rax, %rdi
        call    parse_dec
        movl    %eax, tick_mode(%rip)   /* set before any AP starts */
0:      leaq    s_cpus_key(%rip), %rdi  /* testing aid: cpus=<n> overrides */
        call    cmdline_value           /* the MP table (APIC ids 0..n-1) */
        testq   %rax, %rax
        jz      0f
        movq    %rax, %rdi
        call    parse_dec
        movl    %eax, %r12d
        cmpl    $MAX_CPUS, %eax
        jbe     8f
        movl    $MAX_CPUS, %eax
8:      leaq    apic_ids(%rip), %rcx
9:      decl    %eax
        js      1f
        movl    %eax, (%rcx,%rax,4)
        jmp     9b
0:      leaq    apic_ids(%rip), %rdi
        call    mp_cpus
        movl    %eax, %r12d             /* expected CPUs */
1:      testl   %r12d, %r12d
        jnz     1f
        leaq    s_no_mp(%rip), %rdi
        jmp     test_fail
1:      movl    $LAPIC_BASE, %r15d
        movl    LAPIC_ID(%r15), %r13d
        shrl    $24, %r13d              /* BSP APIC id */
        movl    LAPIC_SVR(%r15), %eax   /* software-enable the LAPIC */
        orl     $0x1ff, %eax
        movl    %eax, LAPIC_SVR(%r15)
        /* real-mode trampoline to AP_TRAMPOLINE */
        leaq    ap_trampoline(%rip), %rsi
        movl    $AP_TRAMPOLINE, %edi
        movl    ap_trampoline_len(%rip), %ecx
        rep movsb
        movl    %r13d, %edi
        call    print_cpu
        /* INIT/SIPI/SIPI every other enabled CPU */
        xorl    %ebx, %ebx
2:      cmpl    %r12d, %ebx
        jae     4f
        cmpl    $MAX_CPUS, %ebx
        jae     4f
        leaq    apic_ids(%rip), %rax
        movl    (%rax,%rbx,4), %r14d
        cmpl    %r13d, %r14d
        je      3f
        movl    %r14d, %edi
        movl    $0x4500, %esi           /* INIT, level assert */
        call    send_ipi
        movq    $TICKS_INIT_DELAY, %rdi
        call    delay_ticks
        movl    %r14d, %edi
        movl    $0x4600 | (AP_TRAMPOLINE >> 12), %esi   /* SIPI */
        call    send_ipi
        movq    $TICKS_SIPI_DELAY, %rdi
        call    delay_ticks
        movl    %r14d, %edi
        movl    $0x4600 | (AP_TRAMPOLINE >> 12), %esi
        call    send_ipi
        movq    $TICKS_SIPI_DELAY, %rdi
        call    delay_ticks
3:      incl    %ebx
        jmp     2b
        /* wait (bounded) for every CPU to check in */
4:      call    rdtsc64
        movq    %rax, %rbx
5:      cmpl    %r12d, online(%rip)
        jae     6f
        pause
        call    rdtsc64
        subq    %rbx, %rax
        movabsq $TICKS_AP_TIMEOUT, %rcx
        cmpq    %rcx, %rax
        jb      5b
6:      leaq    print_lock(%rip), %rdi
        call    spin_lock
        leaq    s_smp(%rip), %rdi
        call    puts
        movl    online(%rip), %edi
        call    put_dec
        leaq    s_expected(%rip), %rdi
        call    puts
        movl    %r12d, %edi
        call    put_dec
        call    put_nl
        leaq    print_lock(%rip), %rdi
        call    spin_unlock
        cmpl    %r12d, online(%rip)
        jae     7f
        leaq    s_timeout(%rip), %rdi
        jmp     test_fail
7:      cmpl    $0, tick_mode(%rip)
        je      8f
        movl    %r13d, %edi
        call    tick_loop               /* never returns */
8:      popq    %r15
        popq    %r14
        popq    %r13
        popq    %r12
        popq    %rbx
        ret

/* send_ipi(EDI = APIC id, ESI = ICR low): waits for the previous IPI to be
 * delivered, sends, waits again. */
send_ipi:
        pushq   %rbx
        pushq   %r12
        pushq   %r13
        movl    %edi, %r12d
        movl    %esi, %r13d
        call    wait_icr
        movl    $LAPIC_BASE, %ebx
        shll    $24, %r12d
        movl    %r12d, LAPIC_ICR_HI(%rbx)
        movl    %r13d, LAPIC_ICR_LO(%rbx)
        call    wait_icr
        popq    %r13
        popq    %r12
        popq    %rbx
        ret

wait_icr:
        pushq   %rbx
        call    rdtsc64
        movq    %rax, %rbx
1:      movl    $LAPIC_BASE, %eax
        testl   $0x1000, LAPIC_ICR_LO(%rax)     /* delivery status */
        jz      2f
        pause
        call    rdtsc64
        subq    %rbx, %rax
        cmpq    $TICKS_ICR_WAIT, %rax
        jb      1b
        leaq    s_icr(%rip), %rdi
        jmp     test_fail
2:      popq    %rbx
        ret

/* print_cpu(EDI = APIC id): "CPU apic=<id>" under the print lock. */
print_cpu:
        pushq   %rbx
        movl    %edi, %ebx
        leaq    print_lock(%rip), %rdi
        call    spin_lock
        leaq    s_cpu(%rip), %rdi
        call    puts
        movl    %ebx, %edi
        call    put_dec
        call    put_nl
        leaq    print_lock(%rip), %rdi
        call    spin_unlock
        popq    %rbx
        ret

/* tick_loop(EDI = APIC id): count forever, one TICK line per period. */
tick_loop:
        movl    %edi, %r13d
        xorl    %r12d, %r12d
        movq    $TICKS_PERIOD, %rax
        xorl    %edx, %edx
        movl    tick_mode(%rip), %ecx
        divq    %rcx
        movq    %rax, %r14              /* the period */
1:      movq    %r14, %rdi
        call    delay_ticks
        incq    %r12
        leaq    print_lock(%rip), %rdi
        call    spin_lock
        leaq    s_tick(%rip), %rdi
        call    puts
        movl    %r13d, %edi
        call    put_dec
        leaq    s_tick_n(%rip), %rdi
        call    puts
        movq    %r12, %rdi
        call    put_dec
        leaq    s_tick_nonce(%rip), %rdi
        call    puts
        movq    nonce(%rip), %rdi
        call    put_hex
        call    put_nl
        leaq    print_lock(%rip), %rdi
        call    spin_unlock
        jmp     1b

/* ap_main(EDI = CPU index), ring 3 on an AP: check in, then return (halt),
 * or count in tick mode. */
        .globl  ap_main
ap_main:
        pushq   %rbx
        movl    $LAPIC_BASE, %eax
        movl    LAPIC_ID(%rax), %ebx
        shrl    $24, %ebx
        movl    %ebx, %edi
        call    print_cpu
        lock incl online(%rip)
        cmpl    $0, tick_mode(%rip)
        je      1f
        movl    %ebx, %edi
        call    tick_loop               /* never returns */
1:      popq    %rbx
        ret

        .data
        .p2align 2
print_lock:     .long   0
online:         .long   1               /* the BSP */
tick_mode:      .long   0
        .p2align 3
nonce:          .quad   0
        .bss
        .p2align 2
apic_ids:       .skip   MAX_CPUS * 4
