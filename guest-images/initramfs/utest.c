/*
 * utest: guest-userspace checks for Ember's reference initramfs (/bin/utest).
 * Static, no libc: every system call is a `syscall` instruction of its own, so
 * what this measures and checks is the system-call path itself.
 *
 *   utest syscalls N   on every online CPU (one pinned process each): N getpid
 *                      calls (more until 3 signals landed) with SIGALRM every
 *                      millisecond, argument registers checked after each
 *                      call, a pipe round trip every 64
 *   utest fork N       N x fork + execve(self) + wait4, the child's output
 *                      through a pipe and its exit status checked
 *   utest forge LSTAR  a child jumps to the kernel's system-call entry (LSTAR,
 *                      hex) itself, with SYSCALL-like registers: it must get
 *                      SIGSEGV at that address, never a system call
 *   utest tls N        N x fork + execve(self) + wait4 where the child sets
 *                      up memory as a static libc does first (brk, write a
 *                      pattern, arch_prctl(ARCH_SET_FS), read it back through
 *                      %fs and plainly); any difference is reported
 *   utest bench N      ns per getpid and per fork+exec+wait
 *
 * Output lines start with "UTEST " and end with "ok" or "FAIL ...": a contract
 * with tests/linux_boot.rs. Exit status 0 when everything held.
 */
#include "sys.h"

#define SYS_read 0
#define SYS_write 1
#define SYS_close 3
#define SYS_rt_sigaction 13
#define SYS_rt_sigreturn 15
#define SYS_pipe 22
#define SYS_setitimer 38
#define SYS_getpid 39
#define SYS_fork 57
#define SYS_execve 59
#define SYS_exit 60
#define SYS_wait4 61
#define SYS_brk 12
#define SYS_arch_prctl 158
#define ARCH_SET_FS 0x1002
#define SYS_clock_gettime 228
#define SYS_sched_setaffinity 203
#define SYS_sched_getaffinity 204
#define SIGSEGV 11
#define SIGALRM 14
#define SA_SIGINFO 4
#define SA_RESTORER 0x04000000
#define SA_RESTART 0x10000000


static u64 slen(const char *s) { u64 n = 0; while (s[n]) n++; return n; }
static void out(const char *s) { sys3(SYS_write, 1, s, slen(s)); }
static void out_u(u64 v)
{
	char b[24]; int i = 23; b[i] = 0;
	do { b[--i] = '0' + v % 10; v /= 10; } while (v);
	out(b + i);
}
static void out_x(u64 v)
{
	char b[20]; int i = 19; b[i] = 0;
	do { b[--i] = "0123456789abcdef"[v & 15]; v >>= 4; } while (v);
	b[--i] = 'x'; b[--i] = '0';
	out(b + i);
}
static __attribute__((noreturn)) void exit_(int code)
{
	for (;;) sys3(SYS_exit, code, 0, 0);
}
static u64 parse(const char *s, int base)
{
	u64 v = 0;
	if (base == 16 && s[0] == '0' && s[1] == 'x') s += 2;
	for (; *s; s++) {
		int d = *s >= '0' && *s <= '9' ? *s - '0' : *s >= 'a' && *s <= 'f' ? *s - 'a' + 10 : -1;
		if (d < 0 || d >= base) break;
		v = v * base + d;
	}
	return v;
}
static int streq(const char *a, const char *b)
{
	while (*a && *a == *b) a++, b++;
	return *a == *b;
}
static u64 now_ns(void)
{
	i64 ts[2];
	sys3(SYS_clock_gettime, 1 /* CLOCK_MONOTONIC */, ts, 0);
	return (u64)ts[0] * 1000000000ul + ts[1];
}

struct ksigaction { void *handler; u64 flags; void (*restorer)(void); u64 mask; };
extern void restorer(void);
__asm__(".text\nrestorer:\n mov $15, %eax\n syscall\n hlt\n");

static void on_signal(int sig, void (*handler)(), u64 flags)
{
	struct ksigaction act = { (void *)handler, flags | SA_RESTORER, restorer, 0 };
	sys4(SYS_rt_sigaction, sig, &act, 0, 8);
}

static volatile u64 alarms, alarm_bad;
static i64 my_pid;
static void on_alarm(int sig)
{
	alarms++;
	if (sig != SIGALRM || sys3(SYS_getpid, 0, 0, 0) != my_pid) alarm_bad++;
}

/* getpid with known values in every argument register, checked afterwards: the
 * repair must hand the kernel and the caller the registers SYSCALL leaves. */
static int checked_getpid(u64 seed)
{
	register u64 rdi __asm__("rdi") = seed;
	register u64 rsi __asm__("rsi") = seed ^ 1;
	register u64 rdx __asm__("rdx") = seed ^ 2;
	register u64 r10 __asm__("r10") = seed ^ 3;
	register u64 r8 __asm__("r8") = seed ^ 4;
	register u64 r9 __asm__("r9") = seed ^ 5;
	u64 rax = SYS_getpid;
	__asm__ volatile("syscall"
			 : "+a"(rax), "+r"(rdi), "+r"(rsi), "+r"(rdx), "+r"(r10), "+r"(r8), "+r"(r9)
			 :
			 : "rcx", "r11", "memory");
	return (i64)rax == my_pid && rdi == seed && rsi == (seed ^ 1) && rdx == (seed ^ 2) &&
	       r10 == (seed ^ 3) && r8 == (seed ^ 4) && r9 == (seed ^ 5);
}

static int syscalls_on_this_cpu(u64 n, int cpu)
{
	u64 mask = 1ul << cpu, bad = 0, i;
	int fds[2];
	char c;
	if (sys3(SYS_sched_setaffinity, 0, 8, &mask) != 0) {
		out("UTEST FAIL sched_setaffinity\n");
		return 1;
	}
	my_pid = sys3(SYS_getpid, 0, 0, 0);
	alarms = alarm_bad = 0;
	on_signal(SIGALRM, (void (*)())on_alarm, SA_RESTART);
	i64 itv[4] = { 0, 1000, 0, 1000 }; /* every 1 ms */
	sys3(SYS_setitimer, 0 /* ITIMER_REAL */, itv, 0);
	if (sys3(SYS_pipe, fds, 0, 0) != 0) {
		out("UTEST FAIL pipe\n");
		return 1;
	}
	/* At least N calls, and on until a few signals have landed (a fast host may
	 * finish N calls within one timer period). */
	for (i = 0; i < n || (alarms < 3 && i < 1000 * n); i++) {
		if (!checked_getpid(i * 0x9e3779b97f4a7c15ul))
			bad++;
		if (i % 64 == 0) {
			c = (char)i;
			char back = ~c;
			if (sys3(SYS_write, fds[1], &c, 1) != 1 || sys3(SYS_read, fds[0], &back, 1) != 1 ||
			    back != c)
				bad++;
		}
	}
	i64 off[4] = { 0, 0, 0, 0 };
	sys3(SYS_setitimer, 0, off, 0);
	out("UTEST syscalls cpu=");
	out_u(cpu);
	out(" n=");
	out_u(i);
	out(" signals=");
	out_u(alarms);
	out(" bad=");
	out_u(bad + alarm_bad);
	out(bad + alarm_bad || !alarms ? " FAIL\n" : " ok\n");
	return bad + alarm_bad || !alarms;
}

static int wait_child(i64 pid)
{
	int status = 0;
	if (sys4(SYS_wait4, pid, &status, 0, 0) != pid)
		return -1;
	return status;
}

static int cmd_syscalls(u64 n)
{
	u64 mask = 0;
	int cpus = 0, cpu, failed = 0;
	i64 pids[64];
	sys3(SYS_sched_getaffinity, 0, 8, &mask);
	for (cpu = 0; cpu < 64; cpu++) {
		if (!(mask >> cpu & 1))
			continue;
		i64 pid = sys3(SYS_fork, 0, 0, 0);
		if (pid == 0)
			exit_(syscalls_on_this_cpu(n, cpu));
		pids[cpus++] = pid;
	}
	for (cpu = 0; cpu < cpus; cpu++)
		failed |= wait_child(pids[cpu]) != 0;
	out("UTEST syscalls cpus=");
	out_u(cpus);
	out(failed || !cpus ? " FAIL\n" : " ok\n");
	return failed || !cpus;
}

static const char *self_path = "/proc/self/exe";

/* "UTEST NAME n=N bad=B ok|FAIL"; returns whether any was bad. */
static int report_bad(const char *name, u64 n, u64 bad)
{
	out("UTEST ");
	out(name);
	out(" n=");
	out_u(n);
	out(" bad=");
	out_u(bad);
	out(bad ? " FAIL\n" : " ok\n");
	return bad != 0;
}

/* fork + execve(self, MODE) + wait4 with the child's stdout in a pipe: up to
 * cap - 1 bytes of it in buf (NUL-terminated), their count in *got. Returns the
 * wait status, or -1 when no pipe could be made. */
static int run_child(const char *mode, char **envp, char *buf, i64 cap, i64 *got)
{
	int fds[2];
	if (sys3(SYS_pipe, fds, 0, 0) != 0)
		return -1;
	i64 pid = sys3(SYS_fork, 0, 0, 0);
	if (pid == 0) {
		char *argv[] = { "utest", (char *)mode, 0 };
		sys3(SYS_close, fds[0], 0, 0);
		/* dup2 the pipe onto stdout: the child's output goes through it */
		sys3(33 /* dup2 */, fds[1], 1, 0);
		sys3(SYS_execve, self_path, argv, envp);
		exit_(127);
	}
	sys3(SYS_close, fds[1], 0, 0);
	i64 r;
	*got = 0;
	while (*got < cap - 1 && (r = sys3(SYS_read, fds[0], buf + *got, cap - 1 - *got)) > 0)
		*got += r;
	buf[*got] = 0;
	sys3(SYS_close, fds[0], 0, 0);
	return wait_child(pid);
}

/* One fork + execve(self, "child") + wait4; the child writes "child-ok" into the
 * pipe and exits 7. Returns 0 when all of that happened. */
static int fork_exec_once(char **envp)
{
	char buf[16];
	i64 got;
	int status = run_child("child", envp, buf, sizeof buf, &got);
	return !(got == 9 && buf[0] == 'c' && buf[6] == 'o' && status == 7 << 8);
}

#define TLS_PAGES 3

/* The child of `utest tls`: what a static libc does first after execve. Prints
 * "tls-ok" or "tls-bad WHAT A B" and exits 0. */
static int tls_child(void)
{
	u64 b0 = (u64)sys3(SYS_brk, 0, 0, 0);
	u64 want = b0 + TLS_PAGES * 4096;
	u64 b1 = (u64)sys3(SYS_brk, want, 0, 0);
	if (b1 != want) {
		out("tls-bad brk "); out_x(b0); out(" "); out_x(b1); out("\n");
		return 0;
	}
	u64 *p = (u64 *)b0, i, words = TLS_PAGES * 4096 / 8;
	for (i = 0; i < words; i++)
		p[i] = i ^ 0x5a5a5a5a00000000UL ^ b0;
	u64 tp = b0 + (TLS_PAGES - 1) * 4096;
	i64 r = sys3(SYS_arch_prctl, ARCH_SET_FS, tp, 0);
	u64 via_fs;
	__asm__ volatile("mov %%fs:-8, %0" : "=r"(via_fs));
	u64 expect = p[(tp - b0) / 8 - 1];
	if (r != 0 || via_fs != expect) {
		out("tls-bad fs "); out_x((u64)r); out(" "); out_x(via_fs); out(" "); out_x(expect); out("\n");
		return 0;
	}
	for (i = 0; i < words; i++)
		if (p[i] != (i ^ 0x5a5a5a5a00000000UL ^ b0)) {
			out("tls-bad word "); out_x(i); out(" "); out_x(p[i]); out("\n");
			return 0;
		}
	out("tls-ok\n");
	return 0;
}

/* N x fork + execve(self, "tls") + wait4: every child must print tls-ok and
 * exit 0; the first bad children's lines are shown. */
static int cmd_tls(u64 n, char **envp)
{
	u64 i, bad = 0;
	for (i = 0; i < n; i++) {
		char buf[96];
		i64 got;
		int status = run_child("tlschild", envp, buf, sizeof buf, &got);
		if (status == 0 && streq(buf, "tls-ok\n"))
			continue;
		if (bad++ < 5) {
			out("UTEST tls child i="); out_u(i); out(" status="); out_u((u64)status);
			out(" said: "); out(got ? buf : "nothing\n");
		}
	}
	return report_bad("tls", n, bad);
}

/* `utest avx N`: whether AVX state (ymm1's upper half) and AVX-512 state (ymm16)
 * survive a system call, and a switch to another process on the same CPU. The
 * host's CPU features reach native guest user mode whatever the guest kernel
 * was told, so user code may use them while the kernel does not save them. */
static u64 xgetbv0(void)
{
	u32 lo, hi;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return (u64)hi << 32 | lo;
}

static void cpuid2(u32 leaf, u32 sub, u32 *b, u32 *c)
{
	u32 a, d;
	__asm__ volatile("cpuid" : "=a"(a), "=b"(*b), "=c"(*c), "=d"(d) : "a"(leaf), "c"(sub));
}

/* Loads ymm1 (and ymm16 with AVX-512) with a pattern from `seed`, runs the
 * system call `nr`, returns how many of the 64-bit lanes came back changed. */
static u64 avx_round(u64 seed, int avx512, i64 nr)
{
	u64 in[4], a[4], b[4], lost = 0, i;
	for (i = 0; i < 4; i++)
		in[i] = seed * 0x9e3779b97f4a7c15UL + i;
	__asm__ volatile("vmovdqu %0, %%ymm1" : : "m"(in) : "xmm1");
	if (avx512)
		__asm__ volatile("vmovdqu64 %0, %%ymm16" : : "m"(in));
	sys3(nr, 0, 0, 0);
	__asm__ volatile("vmovdqu %%ymm1, %0" : "=m"(a));
	if (avx512)
		__asm__ volatile("vmovdqu64 %%ymm16, %0" : "=m"(b));
	for (i = 0; i < 4; i++)
		lost += (a[i] != in[i]) + (avx512 && b[i] != in[i]);
	return lost;
}

static int cmd_avx(u64 n)
{
	u32 b1, c1, b7, c7;
	cpuid2(1, 0, &b1, &c1);
	cpuid2(7, 0, &b7, &c7);
	u64 xcr0 = (c1 >> 27 & 1) ? xgetbv0() : 0;
	int avx = (c1 >> 28 & 1) && (xcr0 & 6) == 6;
	int avx512 = avx && (b7 >> 16 & 1) && (b7 >> 31 & 1) && (xcr0 & 0xe0) == 0xe0;
	out("UTEST avx xcr0=");
	out_x(xcr0);
	if (!avx) {
		out(" avx=off ok\n");
		return 0;
	}
	u64 i, lost_call = 0, lost_switch = 0;
	for (i = 0; i < n; i++)
		lost_call += avx_round(i + 1, avx512, SYS_getpid) != 0;
	/* Two processes on CPU 0 taking turns with sched_yield. */
	u64 one = 1;
	sys3(SYS_sched_setaffinity, 0, sizeof one, &one);
	i64 pid = sys3(SYS_fork, 0, 0, 0);
	for (i = 0; i < n; i++)
		lost_switch += avx_round((pid ? 1000 : 2000) + i, avx512, 24 /* sched_yield */) != 0;
	if (pid == 0)
		exit_(lost_switch > 250 ? 250 : (int)lost_switch);
	int status = wait_child(pid);
	lost_switch += (u64)(status >> 8 & 0xff);
	out(avx512 ? " avx512=on" : " avx512=off");
	out(" lost_after_syscall=");
	out_u(lost_call);
	out(" lost_after_switch=");
	out_u(lost_switch);
	out(" n=");
	out_u(n);
	out(lost_call || lost_switch ? " FAIL\n" : " ok\n");
	return lost_call || lost_switch;
}

static int cmd_fork(u64 n, char **envp)
{
	u64 i, bad = 0;
	for (i = 0; i < n; i++)
		bad += fork_exec_once(envp);
	return report_bad("fork", n, bad);
}

static u64 forge_target;
static void on_segv(int sig, u64 *info, void *ctx)
{
	(void)ctx;
	/* siginfo: si_signo, si_errno, si_code (ints), then si_addr at offset 16 */
	exit_(sig == SIGSEGV && info[2] == forge_target ? 42 : 43);
}

/* The child jumps to LSTAR with RCX/R11 as SYSCALL would leave them and RAX =
 * exit(99): a repair fooled into entering the kernel makes it exit 99. */
static int cmd_forge(u64 lstar)
{
	forge_target = lstar;
	i64 pid = sys3(SYS_fork, 0, 0, 0);
	if (pid == 0) {
		on_signal(SIGSEGV, (void (*)())on_segv, SA_SIGINFO);
		__asm__ volatile("pushfq\n pop %%r11\n and $~0x47700, %%r11\n"
				 "lea 1f(%%rip), %%rcx\n"
				 "mov $60, %%eax\n mov $99, %%edi\n"
				 "jmp *%0\n1:"
				 :
				 : "r"(lstar)
				 : "rax", "rcx", "rdi", "r11", "memory");
		exit_(44);
	}
	int status = wait_child(pid);
	out("UTEST forge lstar=");
	out_x(lstar);
	out(" status=");
	out_u((u64)status);
	/* exit code 42: SIGSEGV at LSTAR, as the architecture gives a user jump there */
	out(status == 42 << 8 ? " ok\n" : " FAIL\n");
	return status != 42 << 8;
}

static int cmd_bench(u64 n, char **envp)
{
	u64 i, t0, t1, forks = n / 100 ? n / 100 : 1;
	my_pid = sys3(SYS_getpid, 0, 0, 0);
	t0 = now_ns();
	for (i = 0; i < n; i++)
		sys3(SYS_getpid, 0, 0, 0);
	t1 = now_ns();
	out("UTEST bench getpid_ns=");
	out_u((t1 - t0) / n);
	t0 = now_ns();
	for (i = 0; i < forks; i++)
		if (fork_exec_once(envp)) {
			out(" FAIL\n");
			return 1;
		}
	t1 = now_ns();
	out(" fork_exec_wait_us=");
	out_u((t1 - t0) / forks / 1000);
	out(" n=");
	out_u(n);
	out(" ok\n");
	return 0;
}

int main(int argc, char **argv, char **envp)
{
	if (argc >= 2 && streq(argv[1], "tlschild"))
		return tls_child();
	if (argc >= 2 && streq(argv[1], "child")) {
		out("child-ok\n");
		return 7;
	}
	if (argc < 3) {
		out("usage: utest syscalls|fork|tls|bench N | forge LSTAR_HEX\n");
		return 2;
	}
	if (streq(argv[1], "syscalls"))
		return cmd_syscalls(parse(argv[2], 10));
	if (streq(argv[1], "fork"))
		return cmd_fork(parse(argv[2], 10), envp);
	if (streq(argv[1], "avx"))
		return cmd_avx(parse(argv[2], 10));
	if (streq(argv[1], "tls"))
		return cmd_tls(parse(argv[2], 10), envp);
	if (streq(argv[1], "forge"))
		return cmd_forge(parse(argv[2], 16));
	if (streq(argv[1], "bench"))
		return cmd_bench(parse(argv[2], 10), envp);
	out("utest: unknown command\n");
	return 2;
}

__asm__(".text\n.global _start\n_start:\n"
	" xor %rbp, %rbp\n"
	" mov (%rsp), %rdi\n"        /* argc */
	" lea 8(%rsp), %rsi\n"       /* argv */
	" lea 8(%rsi,%rdi,8), %rdx\n" /* envp */
	" and $-16, %rsp\n"
	" call main\n"
	" mov %eax, %edi\n"
	" mov $60, %eax\n"
	" syscall\n");

/* gcc may emit calls to these for struct copies even in freestanding code. */
void *memset(void *d, int c, u64 n)
{
	unsigned char *p = d;
	while (n--) *p++ = (unsigned char)c;
	return d;
}
void *memcpy(void *d, const void *s, u64 n)
{
	unsigned char *p = d;
	const unsigned char *q = s;
	while (n--) *p++ = *q++;
	return d;
}
