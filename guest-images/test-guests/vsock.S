/* vsock: a minimal virtio-vsock stack in ring 3, by polling (common/virtio.S
 * queues of 16): RX has 16 buffers of 4096 + 44 bytes, TX sends one packet at
 * a time, the guest advertises a small receive buffer (16 KiB) and sends a
 * CREDIT_UPDATE whenever it consumed half of it; it sends data only within
 * the credit Ember advertises. One connection at a time. The mode comes from
 * vsock=<mode>:
 *
 *   check (default)  connect to host port 52, send "hello from guest", read
 *                    16 bytes, close (SHUTDOWN, wait for the RST); listen on
 *                    port 52 for a host-initiated connection and echo what it
 *                    sends until the host shuts down; then five malformed
 *                    packets (wrong source CID, wrong destination CID,
 *                    unknown op, length beyond the buffer, wrong type), each
 *                    of which must be answered with a RST.
 *   bulk             connect to host port 53, receive mib=<n> MiB (default
 *                    16) and hash them, then send n MiB of the pattern
 *                    byte[p] = (p * 7 + (p >> 12)) & 0xff, then close.
 *
 * Output (see docs/test-guests-protocol.md):
 *   VSOCK cid=<n>
 *   VSOCK connected port=<p>            VSOCK recv bytes=<n> fnv=<hex>
 *   VSOCK closed                        VSOCK listening port=52
 *   VSOCK accepted port=<host port>     VSOCK echoed bytes=<n>
 *   VSOCK malformed rst=<n>
 *   VSOCK bulk recv bytes=<n> fnv=<hex> tsc=<ticks>
 *   VSOCK bulk sent bytes=<n> tsc=<ticks>
 */
#include "common/defs.h"

#define QB           (3 * 4096)      /* one queue's memory */
#define RXSTRIDE     8192
#define RXLEN        (4096 + 44)
#define MAXPAY       4096
#define GUEST_BUF    16384
#define OP_REQUEST   1
#define OP_RESPONSE  2
#define OP_RST       3
#define OP_SHUTDOWN  4
#define OP_RW        5
#define OP_CREDIT_UPDATE 6
#define OP_CREDIT_REQUEST 7

        .section .rodata
        .globl  guest_name
guest_name:     .asciz  "vsock"
k_mode:         .asciz  "vsock="
k_mib:          .asciz  "mib="
w_bulk:         .asciz  "bulk"
hello:          .ascii  "hello from guest"
s_cid:          .asciz  "VSOCK cid="
s_conn:         .asciz  "VSOCK connected port="
s_recv:         .asciz  "VSOCK recv bytes="
s_fnv:          .asciz  " fnv="
s_tsc:          .asciz  " tsc="
s_closed:       .asciz  "VSOCK closed"
s_listen:       .asciz  "VSOCK listening port=52"
s_acc:          .asciz  "VSOCK accepted port="
s_echo:         .asciz  "VSOCK echoed bytes="
s_mal:          .asciz  "VSOCK malformed rst="
s_brecv:        .asciz  "VSOCK bulk recv bytes="
s_bsent:        .asciz  "VSOCK bulk sent bytes="
e_nodev:        .asciz  "no-virtio-mmio-device"
e_refused:      .asciz  "connect-refused"
e_reset:        .asciz  "connection-reset"
e_eof:          .asciz  "early-eof"
e_short:        .asciz  "short-data"

        .data
        .p2align 3
dev:            .quad   0
cid:            .quad   0
rx_used:        .quad   0               /* used entries consumed */
rx_prev:        .quad   -1              /* buffer to post again */
tx_next:        .quad   0
next_port:      .quad   1024
cur_local:      .quad   0
cur_peer:       .quad   0
peer_buf:       .quad   0
peer_fwd:       .quad   0
tx_cnt:         .quad   0
rx_cnt:         .quad   0               /* bytes consumed = our fwd_cnt */
credit_sent:    .quad   0
o_src_cid:      .quad   0               /* header overrides (malformed tests) */
o_dst_cid:      .quad   2
o_type:         .quad   1
o_len_extra:    .quad   0
h_op:           .quad   0
h_src_port:     .quad   0
h_dst_port:     .quad   0
h_len:          .quad   0
h_flags:        .quad   0
pkt_data:       .quad   0
hash:           .quad   0
counter:        .quad   0

        .bss
        .p2align 12
queues:         .skip   3 * QB
rxbufs:         .skip   16 * RXSTRIDE
txbuf:          .skip   8192
databuf:        .skip   MAXPAY
evbuf:          .skip   16

        .text
/* send_pkt(EDI = op, ESI = payload length, RDX = payload, ECX = flags) */
send_pkt:
        pushq   %rbx
        pushq   %r12
        movl    %esi, %r12d
        leaq    txbuf(%rip), %rbx
        movq    o_src_cid(%rip), %rax
        movq    %rax, 0(%rbx)
        movq    o_dst_cid(%rip), %rax
        movq    %rax, 8(%rbx)
        movq    cur_local(%rip), %rax
        movl    %eax, 16(%rbx)
        movq    cur_peer(%rip), %rax
        movl    %eax, 20(%rbx)
        movl    %esi, %eax
        addl    o_len_extra(%rip), %eax
        movl    %eax, 24(%rbx)
        movq    o_type(%rip), %rax
        movw    %ax, 28(%rbx)
        movw    %di, 30(%rbx)
        movl    %ecx, 32(%rbx)
        movl    $GUEST_BUF, 36(%rbx)
        movq    rx_cnt(%rip), %rax
        movl    %eax, 40(%rbx)
        movq    %rax, credit_sent(%rip)
        cmpl    $OP_RW, %edi
        jne     1f
        addq    %r12, tx_cnt(%rip)
1:      leaq    44(%rbx), %rdi                  /* payload */
        movq    %rdx, %rsi
        movl    %r12d, %ecx
        rep movsb
        leaq    queues + QB(%rip), %rdi
        movq    tx_next(%rip), %rsi
        movq    %rbx, %rdx
        leal    44(%r12), %ecx
        xorl    %r8d, %r8d
        call    vq_post
        incq    tx_next(%rip)
        movq    dev(%rip), %rdi
        movl    $1, %esi
        call    vq_notify
        leaq    queues + QB(%rip), %rdi
        movq    tx_next(%rip), %rsi
        call    vq_wait
        popq    %r12
        popq    %rbx
        ret

/* recv_pkt() -> EAX = op of the next packet from Ember (its fields in h_*,
 * payload at pkt_data); the previous buffer goes back to the device first. */
recv_pkt:
        pushq   %rbx
        movq    rx_prev(%rip), %rsi
        testq   %rsi, %rsi
        js      1f
        leaq    queues(%rip), %rdi
        movq    %rsi, %rdx
        shlq    $13, %rdx                       /* * RXSTRIDE */
        leaq    rxbufs(%rip), %rax
        addq    %rax, %rdx
        movl    $RXLEN, %ecx
        movl    $2, %r8d
        call    vq_post
        movq    $-1, rx_prev(%rip)
        movq    dev(%rip), %rdi
        xorl    %esi, %esi
        call    vq_notify
1:      leaq    queues(%rip), %rdi
        movq    rx_used(%rip), %rsi
        incl    %esi
        call    vq_wait
        leaq    queues(%rip), %rdi
        movq    rx_used(%rip), %rsi
        call    vq_used_len
        incq    rx_used(%rip)
        movl    %edx, %edx
        movq    %rdx, rx_prev(%rip)
        shlq    $13, %rdx
        leaq    rxbufs(%rip), %rbx
        addq    %rdx, %rbx
        movl    16(%rbx), %eax
        movq    %rax, h_src_port(%rip)
        movl    20(%rbx), %eax
        movq    %rax, h_dst_port(%rip)
        movl    24(%rbx), %eax
        movq    %rax, h_len(%rip)
        movl    32(%rbx), %eax
        movq    %rax, h_flags(%rip)
        leaq    44(%rbx), %rax
        movq    %rax, pkt_data(%rip)
        movzwl  30(%rbx), %eax
        movq    %rax, h_op(%rip)
        call    is_current
        testl   %eax, %eax
        jz      2f
        call    recv_credit_from_header
2:      movq    h_op(%rip), %rax
        popq    %rbx
        ret

/* is_current() -> EAX = 1 when the last packet belongs to the connection. */
is_current:
        xorl    %eax, %eax
        movq    h_src_port(%rip), %rcx
        cmpq    cur_peer(%rip), %rcx
        jne     1f
        movq    h_dst_port(%rip), %rcx
        cmpq    cur_local(%rip), %rcx
        jne     1f
        movl    $1, %eax
1:      ret

/* new_conn(EDI = local port, ESI = peer port): fresh counters. */
new_conn:
        movq    %rdi, cur_local(%rip)
        movq    %rsi, cur_peer(%rip)
        xorl    %eax, %eax
        movq    %rax, peer_buf(%rip)
        movq    %rax, peer_fwd(%rip)
        movq    %rax, tx_cnt(%rip)
        movq    %rax, rx_cnt(%rip)
        movq    %rax, credit_sent(%rip)
        ret

/* consume(RDI = bytes): counts them consumed; a credit update every half buffer. */
consume:
        addq    %rdi, rx_cnt(%rip)
        movq    rx_cnt(%rip), %rax
        subq    credit_sent(%rip), %rax
        cmpq    $GUEST_BUF / 2, %rax
        jb      1f
        movl    $OP_CREDIT_UPDATE, %edi
        xorl    %esi, %esi
        xorl    %edx, %edx
        xorl    %ecx, %ecx
        jmp     send_pkt
1:      ret

/* control(): what to do with a packet that is not the one awaited: a RST of
 * the connection fails the test, a CREDIT_REQUEST is answered, stray data is
 * consumed. */
control:
        call    is_current
        testl   %eax, %eax
        jz      9f
        movq    h_op(%rip), %rax
        cmpl    $OP_RST, %eax
        je      f_reset
        cmpl    $OP_RW, %eax
        jne     1f
        movq    h_len(%rip), %rdi
        jmp     consume
1:      cmpl    $OP_CREDIT_REQUEST, %eax
        jne     9f
        movl    $OP_CREDIT_UPDATE, %edi
        xorl    %esi, %esi
        xorl    %edx, %edx
        xorl    %ecx, %ecx
        jmp     send_pkt
9:      ret

/* connect(EDI = host port): REQUEST, wait for the RESPONSE. */
connect:
        movl    %edi, %esi
        movq    next_port(%rip), %rdi
        incq    next_port(%rip)
        call    new_conn
        movl    $OP_REQUEST, %edi
        xorl    %esi, %esi
        xorl    %edx, %edx
        xorl    %ecx, %ecx
        call    send_pkt
1:      call    recv_pkt
        call    is_current
        testl   %eax, %eax
        jz      1b
        cmpq    $OP_RESPONSE, h_op(%rip)
        je      2f
        cmpq    $OP_RST, h_op(%rip)
        je      f_refused
        jmp     1b
2:      leaq    s_conn(%rip), %rdi
        call    puts
        movq    cur_peer(%rip), %rdi
        call    put_dec
        jmp     put_nl

/* send_data(RDX = data, ESI = length <= MAXPAY): waits for credit, sends. */
send_data:
        pushq   %rbx
        pushq   %r12
        movq    %rdx, %rbx
        movl    %esi, %r12d
1:      movq    tx_cnt(%rip), %rax
        subq    peer_fwd(%rip), %rax            /* in flight (32-bit counters) */
        movl    %eax, %eax
        movq    peer_buf(%rip), %rcx
        subq    %rax, %rcx
        jb      2f
        cmpq    %r12, %rcx
        jae     3f
2:      call    recv_pkt
        call    control
        jmp     1b
3:      movl    $OP_RW, %edi
        movl    %r12d, %esi
        movq    %rbx, %rdx
        xorl    %ecx, %ecx
        call    send_pkt
        popq    %r12
        popq    %rbx
        ret

/* recv_data() -> EAX = bytes of the next data packet (hashed into `hash`
 * and consumed), or 0 when the host shut down. */
recv_data:
        pushq   %rbx
1:      call    recv_pkt
        call    is_current
        testl   %eax, %eax
        jz      1b
        movq    h_op(%rip), %rax
        cmpl    $OP_SHUTDOWN, %eax
        je      8f
        cmpl    $OP_RW, %eax
        je      2f
        call    control
        jmp     1b
2:      movq    pkt_data(%rip), %rdi
        movq    h_len(%rip), %rsi
        call    fnv_update
        movq    h_len(%rip), %rbx
        movq    %rbx, %rdi
        call    consume
        movl    %ebx, %eax
        popq    %rbx
        ret
8:      xorl    %eax, %eax
        popq    %rbx
        ret

/* close(): SHUTDOWN both ways, wait for Ember's RST. */
close:
        movl    $OP_SHUTDOWN, %edi
        xorl    %esi, %esi
        xorl    %edx, %edx
        movl    $3, %ecx
        call    send_pkt
1:      call    recv_pkt
        call    is_current
        testl   %eax, %eax
        jz      1b
        cmpq    $OP_RST, h_op(%rip)
        jne     1b
        leaq    s_closed(%rip), %rdi
        jmp     put_line

/* fnv_update(RDI = data, RSI = length): FNV-1a 64 over the stream so far. */
fnv_update:
        movq    hash(%rip), %rax
        call    fnv1a64_more
        movq    %rax, hash(%rip)
        ret

hash_reset:
        movabsq $0xcbf29ce484222325, %rax
        movq    %rax, hash(%rip)
        ret

/* put_kv(RDI = label, RSI = number): "<label><decimal>" */
put_kv:
        pushq   %rsi
        call    puts
        popq    %rdi
        jmp     put_dec

/* expect_rst(EDI = op, ECX = flags): sends one packet on the current
 * (fake) connection with the overrides set, waits for the RST; counts it. */
expect_rst:
        xorl    %esi, %esi
        xorl    %edx, %edx
        call    send_pkt
1:      call    recv_pkt
        call    is_current
        testl   %eax, %eax
        jz      1b
        cmpq    $OP_RST, h_op(%rip)
        jne     1b
        incq    counter(%rip)
        movq    cid(%rip), %rax                 /* overrides back */
        movq    %rax, o_src_cid(%rip)
        movq    $2, o_dst_cid(%rip)
        movq    $1, o_type(%rip)
        movq    $0, o_len_extra(%rip)
        ret

/* ---------------------------------------------------------- modes */
check:
        /* guest -> host */
        movl    $52, %edi
        call    connect
        leaq    hello(%rip), %rdx
        movl    $16, %esi
        call    send_data
        call    hash_reset
        xorl    %ebx, %ebx
1:      call    recv_data
        testl   %eax, %eax
        jz      f_short
        addl    %eax, %ebx
        cmpl    $16, %ebx
        jb      1b
        leaq    s_recv(%rip), %rdi
        movl    %ebx, %esi
        call    put_kv
        leaq    s_fnv(%rip), %rdi
        call    puts
        movq    hash(%rip), %rdi
        call    put_hex
        call    put_nl
        call    close
        /* host -> guest: accept on port 52, echo until the host shuts down */
        leaq    s_listen(%rip), %rdi
        call    put_line
2:      call    recv_pkt
        cmpq    $OP_REQUEST, h_op(%rip)
        jne     2b
        cmpq    $52, h_dst_port(%rip)
        jne     2b
        movl    $52, %edi
        movq    h_src_port(%rip), %rsi
        call    new_conn
        call    recv_credit_from_header
        movl    $OP_RESPONSE, %edi
        xorl    %esi, %esi
        xorl    %edx, %edx
        xorl    %ecx, %ecx
        call    send_pkt
        leaq    s_acc(%rip), %rdi
        movq    cur_peer(%rip), %rsi
        call    put_kv
        call    put_nl
        call    hash_reset
        xorl    %ebx, %ebx
3:      call    recv_data
        testl   %eax, %eax
        jz      4f
        addl    %eax, %ebx
        movl    %eax, %r12d
        leaq    databuf(%rip), %rdi             /* copy out: the buffer goes back */
        movq    pkt_data(%rip), %rsi
        movl    %r12d, %ecx
        rep movsb
        leaq    databuf(%rip), %rdx
        movl    %r12d, %esi
        call    send_data
        jmp     3b
4:      leaq    s_echo(%rip), %rdi
        movl    %ebx, %esi
        call    put_kv
        call    put_nl
        call    close
        /* malformed packets on a connection that does not exist */
        movl    $2000, %edi
        movl    $52, %esi
        call    new_conn
        movq    $0, counter(%rip)
        movq    $99, o_src_cid(%rip)            /* wrong source CID */
        movl    $OP_RW, %edi
        xorl    %ecx, %ecx
        call    expect_rst
        movq    $7, o_dst_cid(%rip)             /* wrong destination CID */
        movl    $OP_RW, %edi
        xorl    %ecx, %ecx
        call    expect_rst
        movl    $99, %edi                       /* unknown op */
        xorl    %ecx, %ecx
        call    expect_rst
        movq    $100, o_len_extra(%rip)         /* length beyond the buffer */
        movl    $OP_RW, %edi
        xorl    %ecx, %ecx
        call    expect_rst
        movq    $2, o_type(%rip)                /* SEQPACKET, not offered */
        movl    $OP_REQUEST, %edi
        xorl    %ecx, %ecx
        call    expect_rst
        leaq    s_mal(%rip), %rdi
        movq    counter(%rip), %rsi
        call    put_kv
        jmp     put_nl

/* The host's REQUEST carries its credit; note it before answering. */
recv_credit_from_header:
        movq    rx_prev(%rip), %rdx
        shlq    $13, %rdx
        leaq    rxbufs(%rip), %rax
        addq    %rdx, %rax
        movl    36(%rax), %ecx
        movq    %rcx, peer_buf(%rip)
        movl    40(%rax), %ecx
        movq    %rcx, peer_fwd(%rip)
        ret

bulk:
        pushq   %r13
        pushq   %r14
        pushq   %r15
        leaq    k_mib(%rip), %rdi
        call    cmdline_value
        movl    $16, %r13d
        testq   %rax, %rax
        jz      1f
        movq    %rax, %rdi
        call    parse_dec
        movq    %rax, %r13
1:      shlq    $20, %r13                       /* bytes each way */
        movl    $53, %edi
        call    connect
        call    hash_reset
        call    rdtsc64
        movq    %rax, %r14
        xorl    %ebx, %ebx
2:      cmpq    %r13, %rbx
        jae     3f
        call    recv_data
        testl   %eax, %eax
        jz      f_eof
        addq    %rax, %rbx
        jmp     2b
3:      call    rdtsc64
        subq    %r14, %rax
        movq    %rax, %r14
        leaq    s_brecv(%rip), %rdi
        movq    %rbx, %rsi
        call    put_kv
        leaq    s_fnv(%rip), %rdi
        call    puts
        movq    hash(%rip), %rdi
        call    put_hex
        leaq    s_tsc(%rip), %rdi
        movq    %r14, %rsi
        call    put_kv
        call    put_nl
        /* send the pattern */
        call    rdtsc64
        movq    %rax, %r14
        xorl    %r15d, %r15d                    /* stream offset */
4:      cmpq    %r13, %r15
        jae     6f
        leaq    databuf(%rip), %rdi
        xorl    %ecx, %ecx
5:      leaq    (%r15,%rcx), %rax               /* p */
        movq    %rax, %rdx
        shrq    $12, %rdx
        imulq   $7, %rax
        addq    %rdx, %rax
        movb    %al, (%rdi,%rcx)
        incl    %ecx
        cmpl    $MAXPAY, %ecx
        jb      5b
        leaq    databuf(%rip), %rdx
        movl    $MAXPAY, %esi
        call    send_data
        addq    $MAXPAY, %r15
        jmp     4b
6:      call    rdtsc64
        subq    %r14, %rax
        movq    %rax, %r14
        leaq    s_bsent(%rip), %rdi
        movq    %r15, %rsi
        call    put_kv
        leaq    s_tsc(%rip), %rdi
        movq    %r14, %rsi
        call    put_kv
        call    put_nl
        call    close
        popq    %r15
        popq    %r14
        popq    %r13
        ret

        .globl  guest_main
guest_main:
        pushq   %rbx
        pushq   %r12
        xorl    %edi, %edi
        call    virtio_mmio_base
        testq   %rax, %rax
        jz      f_nodev
        movq    %rax, dev(%rip)
        movq    %rax, %rdi
        movl    $19, %esi                       /* VIRTIO_ID_VSOCK */
        leaq    queues(%rip), %rdx
        movl    $3, %ecx
        call    virtio_setup
        movq    dev(%rip), %rax
        movl    0x100(%rax), %ecx               /* guest_cid */
        movq    %rcx, cid(%rip)
        movq    %rcx, o_src_cid(%rip)
        leaq    s_cid(%rip), %rdi
        movq    %rcx, %rsi
        call    put_kv
        call    put_nl
        /* receive buffers: descriptor i = buffer i */
        xorl    %ebx, %ebx
1:      leaq    queues(%rip), %rdi
        movl    %ebx, %esi
        movl    %ebx, %edx
        shlq    $13, %rdx
        leaq    rxbufs(%rip), %rax
        addq    %rax, %rdx
        movl    $RXLEN, %ecx
        movl    $2, %r8d
        call    vq_post
        incl    %ebx
        cmpl    $16, %ebx
        jb      1b
        leaq    queues + 2 * QB(%rip), %rdi     /* one event buffer */
        xorl    %esi, %esi
        leaq    evbuf(%rip), %rdx
        movl    $8, %ecx
        movl    $2, %r8d
        call    vq_post
        movq    dev(%rip), %rdi
        xorl    %esi, %esi
        call    vq_notify
        leaq    k_mode(%rip), %rdi
        call    cmdline_value
        testq   %rax, %rax
        jz      2f
        movq    %rax, %rdi
        leaq    w_bulk(%rip), %rsi
        call    token_eq
        testl   %eax, %eax
        jz      2f
        call    bulk
        jmp     3f
2:      call    check
3:      popq    %r12
        popq    %rbx
        ret

f_nodev:        leaq    e_nodev(%rip), %rdi
                jmp     test_fail
f_refused:      leaq    e_refused(%rip), %rdi
                jmp     test_fail
f_reset:        leaq    e_reset(%rip), %rdi
                jmp     test_fail
f_eof:          leaq    e_eof(%rip), %rdi
                jmp     test_fail
f_short:        leaq    e_short(%rip), %rdi
                jmp     test_fail
