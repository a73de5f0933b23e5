/*
 * ember-agent: runs commands for the host over vsock (/bin/ember-agent in the
 * reference initramfs). Static, no libc: raw system calls only.
 *
 *   ember-agent [PORT]   listen on vsock port PORT (default 52), any CID
 *   ember-agent --session  one session on standard input, a connected stream
 *                          socket (tests the protocol where no vsock exists)
 *
 * Four worker processes, forked at start, accept connections and serve one
 * session each at a time (a snapshot of an idle agent VM holds them: after a
 * restore no fork stands between a connection and its command); the first
 * process re-forks a worker that dies. The protocol of docs/vsock.md
 * ("ember-agent"):
 *   host -> agent   "RUN <shell command>\n" (at most 4095 bytes), or
 *                   "EXEC <n>\n" and n bytes of shell script (at most 65536: any
 *                   bytes but NUL, newlines too), or
 *                   "ARGV <n>\n" and n bytes: NUL-terminated strings ROOT,
 *                   DIR, then KEY=VALUE entries, an empty string, then the
 *                   command and its arguments (at most 65536 bytes, 255
 *                   arguments and 61 variables): the words reach the command as
 *                   they are (looked up in PATH), chrooted into ROOT when it is
 *                   not empty, in DIR (`ember run` sends this), then frames
 *   agent -> host   frames
 * or, to ask whether the agent is up: host "PING\n", agent "PONG\n" and the end
 * of the connection.
 * A frame is a kind byte, a 32-bit little-endian length and that many bytes:
 *   0 stdin (host -> agent; length 0 = end of stdin; at most 4096 bytes)
 *   1 stdout, 2 stderr (agent -> host)
 *   3 exit status (agent -> host, 4 bytes: the exit code, or 128 + signal),
 *     the last frame; the agent closes the connection after it.
 * RUN and EXEC are shell scripts; ARGV is an `exec` of the quoted words (or,
 * for `sh -c SCRIPT`, the script). The worker's zygote (below) runs them: a
 * shell loaded ahead, so a command costs no fork and no exec of the shell. An
 * ARGV with a ROOT starts the command itself with clone(CLONE_VM |
 * CLONE_VFORK): no copy of the worker's memory (a fork costs a third of a
 * second where guest kernel code is emulated). A command that cannot start
 * gets a line on stderr and status 127 (not found), 126 (not executable) or
 * 125 (ROOT or DIR unusable). Commands get PATH and the agent's GLIBC_TUNABLES.
 */
#include "sys.h"

#define SYS_read 0
#define SYS_write 1
#define SYS_close 3
#define SYS_poll 7
#define SYS_pipe 22
#define SYS_dup2 33
#define SYS_socket 41
#define SYS_accept 43
#define SYS_bind 49
#define SYS_listen 50
#define SYS_clone 56
#define SYS_fork 57
#define SYS_execve 59
#define SYS_exit 60
#define SYS_wait4 61
#define SYS_kill 62
#define SYS_fcntl 72
#define SYS_rt_sigaction 13
#define F_SETFL 4
#define O_NONBLOCK 04000
#define EAGAIN 11
#define SIGPIPE 13
#define SIGKILL 9
#define SYS_chdir 80
#define SYS_chroot 161
#define SYS_setpriority 141
#define PRIO_PROCESS 0
#define CLONE_VM 0x100
#define CLONE_VFORK 0x4000
#define SIGCHLD 17
#define WORKERS 4
#define MAX_ARGS 256
#define MAX_ENV 64
#define AF_VSOCK 40
#define SOCK_STREAM 1
#define VMADDR_CID_ANY 0xffffffffu
#define POLLIN 1
#define POLLOUT 4
#define LINE_MAX 4096
#define FRAME_MAX 4096
#define SCRIPT_MAX 65536


struct sockaddr_vm {
	unsigned short family, reserved;
	u32 port, cid;
	unsigned char zero[4];
};
struct pollfd {
	int fd;
	short events, revents;
};

static u64 slen(const char *s) { u64 n = 0; while (s[n]) n++; return n; }
static int starts(const char *s, const char *prefix)
{
	while (*prefix)
		if (*s++ != *prefix++) return 0;
	return 1;
}
static void out(const char *s) { sys3(SYS_write, 1, s, slen(s)); }
static void out2(const char *s) { sys3(SYS_write, 2, s, slen(s)); }
static __attribute__((noreturn)) void exit_(int code)
{
	for (;;) sys3(SYS_exit, code, 0, 0);
}

/* Writes all of buf to fd; 0 on success. */
static int write_all(int fd, const void *buf, u64 len)
{
	const char *p = buf;
	while (len) {
		i64 n = sys3(SYS_write, fd, p, len);
		if (n <= 0) return -1;
		p += n, len -= n;
	}
	return 0;
}

/* Sends the frame whose len payload bytes are at buf + 5, in one write (one
 * vsock packet: each costs the guest kernel emulated work). */
static int frame(int fd, int kind, char *buf, u32 len)
{
	buf[0] = kind, buf[1] = len, buf[2] = len >> 8, buf[3] = len >> 16, buf[4] = len >> 24;
	return write_all(fd, buf, 5 + len);
}

/* The commands' environment: PATH, and GLIBC_TUNABLES from the agent's own
 * (set by Ember's policy on software-nested hosts: without it glibc programs
 * use AVX, whose registers the guest kernel does not switch there). */
static char *sh_env[] = { "PATH=/usr/sbin:/usr/bin:/sbin:/bin", 0, 0 };
#define DEFAULT_PATH "/usr/sbin:/usr/bin:/sbin:/bin"

/* What the command's process does before it becomes the command. */
struct start {
	int in, out, err;
	int script, ready; /* a zygote's: become fds 3 and 4 (else -1) */
	int nice;          /* its nice value (a zygote starts in the background) */
	const char *root, *dir;
	char **argv, **envp;
};

/* Runs fn(arg) in a new process that shares this one's memory until it execs
 * or exits (this process waits until then), on its own stack. Returns the
 * pid, or a negative errno. */
i64 spawn_vm(void (*fn)(void *), void *arg, void *stack_top);
__asm__(".text\n.global spawn_vm\nspawn_vm:\n"
	" and $-16, %rdx\n"
	" sub $16, %rdx\n"
	" mov %rdi, (%rdx)\n"         /* fn and arg on the child's stack */
	" mov %rsi, 8(%rdx)\n"
	" mov %rdx, %rsi\n"           /* clone(flags, stack, 0, 0, 0) */
	" mov $0x4111, %edi\n"        /* CLONE_VM | CLONE_VFORK | SIGCHLD */
	" xor %edx, %edx\n"
	" xor %r10d, %r10d\n"
	" xor %r8d, %r8d\n"
	" mov $56, %eax\n"
	" syscall\n"
	" test %rax, %rax\n"
	" jnz 1f\n"
	" pop %rax\n"                 /* the child: fn(arg), then exit(127) */
	" pop %rdi\n"
	" call *%rax\n"
	" mov $127, %edi\n"
	" mov $60, %eax\n"
	" syscall\n"
	"1: ret\n");

/* SIGPIPE's disposition: 0 default, 1 ignored. The agent ignores it: a
 * command that exits with stdin frames still coming must not kill it. */
static void sigpipe(u64 handler)
{
	u64 act[4] = { handler, 0, 0, 0 }; /* handler, flags, restorer, mask */
	sys4(SYS_rt_sigaction, SIGPIPE, act, 0, 8);
}

static void say(const char *a, const char *b, const char *c)
{
	out2(a), out2(b), out2(c), out2("\n");
}

/* The command's process: stdio, root, directory, then execve (PATH searched
 * when the name has no slash). Never returns on success. */
static void start_command(void *arg)
{
	struct start *st = arg;
	static char path[4096];
	sigpipe(0); /* SIG_DFL: the agent ignores SIGPIPE, the command must not */
	sys3(SYS_dup2, st->in, 0, 0);
	sys3(SYS_dup2, st->out, 1, 0);
	sys3(SYS_dup2, st->err, 2, 0);
	if (st->script >= 0) sys3(SYS_dup2, st->script, 3, 0), sys3(SYS_dup2, st->ready, 4, 0);
	for (int fd = st->script >= 0 ? 5 : 3; fd < 64; fd++) sys3(SYS_close, fd, 0, 0);
	if (st->nice) sys3(SYS_setpriority, PRIO_PROCESS, 0, st->nice);
	if (st->root[0] && (sys3(SYS_chroot, st->root, 0, 0) || sys3(SYS_chdir, "/", 0, 0))) {
		say("ember-agent: cannot enter ", st->root, "");
		exit_(125);
	}
	if (st->dir[0] && sys3(SYS_chdir, st->dir, 0, 0)) {
		say("ember-agent: cannot change to ", st->dir, "");
		exit_(125);
	}
	const char *name = st->argv[0];
	i64 err = -2;
	int has_slash = 0;
	for (const char *p = name; *p; p++) has_slash |= *p == '/';
	if (has_slash) {
		err = sys3(SYS_execve, name, st->argv, st->envp);
	} else {
		const char *dirs = DEFAULT_PATH;
		for (char **e = st->envp; *e; e++)
			if (starts(*e, "PATH=")) dirs = *e + 5;
		while (*dirs) {
			u64 n = 0;
			while (dirs[n] && dirs[n] != ':') n++;
			if (n + slen(name) + 2 < sizeof(path)) {
				for (u64 i = 0; i < n; i++) path[i] = dirs[i];
				path[n] = '/';
				const char *q = name;
				u64 k = n + 1;
				while (*q) path[k++] = *q++;
				path[k] = 0;
				i64 r = sys3(SYS_execve, path, st->argv, st->envp);
				if (r != -2) err = r; /* remember EACCES and the like over ENOENT */
			}
			dirs += n;
			if (*dirs == ':') dirs++;
		}
	}
	if (err == -2) {
		say("ember-agent: ", name, ": command not found");
		exit_(127);
	}
	say("ember-agent: ", name, ": cannot execute");
	exit_(126);
}

/* Drops the first n of the *have bytes in rbuf. */
static char rbuf[2 * (FRAME_MAX + 5)];
static void consume(u64 *have, u64 n)
{
	for (u64 k = n; k < *have; k++) rbuf[k - n] = rbuf[k];
	*have -= n;
}

/* Reads exactly len bytes; 0 on success. */
static int read_all(int fd, char *p, u64 len)
{
	while (len) {
		i64 r = sys3(SYS_read, fd, p, len);
		if (r <= 0) return -1;
		p += r, len -= r;
	}
	return 0;
}

/* "<digits>" up to max; -1 if not. */
static i64 number(const char *s, u64 max)
{
	u64 v = 0;
	if (!*s) return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9' || v > max) return -1;
		v = v * 10 + (*s - '0');
	}
	return v > max ? -1 : (i64)v;
}

/* Splits an ARGV body (len bytes, NUL-terminated strings) into st; 0 if valid. */
static int parse_argv(char *body, u64 len, struct start *st, char **argv, char **envp)
{
	char *p = body, *end = body + len;
	if (!len || end[-1]) return -1;
	st->root = p; p += slen(p) + 1;
	if (p >= end) return -1;
	st->dir = p; p += slen(p) + 1;
	int ne = 0, na = 0, has_path = 0;
	while (p < end && *p) {
		if (ne == MAX_ENV - 3) return -1;
		has_path |= starts(p, "PATH=");
		envp[ne++] = p;
		p += slen(p) + 1;
	}
	int has_tunables = 0;
	for (int i = 0; i < ne; i++) has_tunables |= starts(envp[i], "GLIBC_TUNABLES=");
	if (!has_path) envp[ne++] = sh_env[0];
	if (!has_tunables && sh_env[1]) envp[ne++] = sh_env[1];
	envp[ne] = 0;
	if (p >= end) return -1;
	p++; /* the empty string */
	while (p < end) {
		if (na == MAX_ARGS - 1) return -1;
		argv[na++] = p;
		p += slen(p) + 1;
	}
	argv[na] = 0;
	return na ? 0 : -1;
}

/* A command's process as its worker sees it: the pid, the write end of its
 * stdin, the read ends of its stdout and stderr, and (a zygote) the write end
 * of the pipe it reads its script from, else -1. */
struct proc {
	i64 pid;
	int in, out, err, script, ready;
};

static void close_fds(int *fds, int n)
{
	for (int i = 0; i < n; i++)
		if (fds[i] >= 0) sys3(SYS_close, fds[i], 0, 0), fds[i] = -1;
}

/* Starts st with fresh pipes (and a script pipe when `zygote`); 0 on success. */
static int make_proc(struct proc *p, struct start *st, int zygote)
{
	static char stack[16384] __attribute__((aligned(16)));
	/* in, out, err, script, ready: read and write ends */
	int f[10] = { -1, -1, -1, -1, -1, -1, -1, -1, -1, -1 };
	for (int i = 0; i < (zygote ? 10 : 6); i += 2)
		if (sys3(SYS_pipe, f + i, 0, 0)) {
			close_fds(f, 10);
			return -1;
		}
	st->in = f[0], st->out = f[3], st->err = f[5], st->script = f[6], st->ready = f[9];
	i64 pid = spawn_vm(start_command, st, stack + sizeof(stack));
	int theirs[5] = { f[0], f[3], f[5], f[6], f[9] };
	close_fds(theirs, 5);
	if (pid < 0) {
		int ours[5] = { f[1], f[2], f[4], f[7], f[8] };
		close_fds(ours, 5);
		return -1;
	}
	p->pid = pid, p->in = f[1], p->out = f[2], p->err = f[4], p->script = f[7], p->ready = f[8];
	return 0;
}

/* The zygote: a busybox shell started ahead, blocked reading its script from
 * fd 3 with its stdio on the next session's pipes; it closes fd 4 when it got
 * there. A command then costs no fork and no exec of the shell (about 0.7 s
 * where the guest kernel is emulated): in a snapshot of an idle agent VM the
 * zygotes are already loaded. A zygote starts at nice 19, so that making the
 * next one takes little from a command running meanwhile; a command gets nice
 * 0 back. */
static struct proc zygote;
static int zygote_ready;
static char *zygote_argv[] = { "sh", "-c", "exec 4>&-; . /proc/self/fd/3", "sh", 0 };

/* Starts the worker's zygote; with `wait`, returns once it is loaded. */
static void prepare_zygote(int wait)
{
	struct start st = { 0, 0, 0, -1, -1, 19, "", "", zygote_argv, sh_env };
	if (zygote_ready) return;
	zygote_ready = make_proc(&zygote, &st, 1) == 0;
	if (!zygote_ready) return;
	char b;
	while (wait && sys3(SYS_read, zygote.ready, &b, 1) > 0) {
	}
	sys3(SYS_close, zygote.ready, 0, 0);
}

/* The zygote's script (built in zbuf). */
static char zbuf[4 * SCRIPT_MAX + 4096];
static u64 zlen;
static void zput(const char *s, u64 n)
{
	for (u64 i = 0; i < n && zlen < sizeof(zbuf); i++) zbuf[zlen++] = s[i];
}
static void zputs(const char *s) { zput(s, slen(s)); }
static void zquote(const char *s) /* one shell word, whatever its bytes */
{
	zputs("'");
	for (; *s; s++) *s == '\'' ? zputs("'\\''") : zput(s, 1);
	zputs("'");
}
static int streq(const char *a, const char *b)
{
	while (*a && *a == *b) a++, b++;
	return *a == *b;
}

/* The script of an ARGV request for the zygote: fd 3 closed, the directory,
 * the environment, then `exec` of the words, or the script itself for
 * `sh -c SCRIPT` (the zygote is that shell). 0 if it does not fit. */
static int argv_script(const struct start *st)
{
	char **w = st->argv;
	zlen = 0;
	zputs("exec 3<&-\n");
	if (st->dir[0]) zputs("cd "), zquote(st->dir), zputs(" || exit 125\n");
	for (char **e = st->envp; *e; e++) zputs("export "), zquote(*e), zputs("\n");
	if ((streq(w[0], "sh") || streq(w[0], "/bin/sh")) && w[1] && streq(w[1], "-c") && w[2] &&
	    !w[3]) {
		zputs(w[2]);
		zputs("\n");
	} else {
		zputs("exec");
		for (; *w; w++) zputs(" "), zquote(*w);
		zputs("\n");
	}
	return zlen < sizeof(zbuf);
}

static void session(int c)
{
	static char line[LINE_MAX], script[SCRIPT_MAX + 1], buf[FRAME_MAX + 5];
	static char *argv[MAX_ARGS], *envp[MAX_ENV];
	u64 n = 0, have = 0;
	char *sh_argv[] = { "sh", "-c", 0, 0 };
	struct start st = { 0, 0, 0, -1, -1, 0, "", "", sh_argv, sh_env };
	struct proc cmd;

	for (;;) { /* the request line; what follows it stays in rbuf */
		for (n = 0; n < have && rbuf[n] != '\n'; n++) {
		}
		if (n >= LINE_MAX) return;
		if (n < have) break;
		i64 r = sys3(SYS_read, c, rbuf + have, sizeof(rbuf) - have);
		if (r <= 0) return;
		have += r;
	}
	for (u64 k = 0; k < n; k++) line[k] = rbuf[k];
	line[n] = 0;
	consume(&have, n + 1);
	if (n == 4 && starts(line, "PING")) {
		write_all(c, "PONG\n", 5);
		return;
	}
	if (starts(line, "EXEC ") || starts(line, "ARGV ")) {
		i64 len = number(line + 5, SCRIPT_MAX);
		if (len < 0) return;
		u64 got = have < (u64)len ? have : (u64)len;
		for (u64 k = 0; k < got; k++) script[k] = rbuf[k];
		consume(&have, got);
		if (read_all(c, script + got, len - got)) return;
		script[len] = 0;
		if (line[0] == 'E') {
			sh_argv[2] = script;
		} else if (parse_argv(script, len, &st, argv, envp)) {
			return;
		} else {
			st.argv = argv, st.envp = envp;
		}
	} else if (starts(line, "RUN ")) {
		sh_argv[2] = line + 4;
	} else {
		return;
	}
	/* The zygote runs it, unless it must be chrooted (or no zygote is there). */
	if (zygote_ready && !st.root[0]) {
		if (st.argv == sh_argv) {
			zlen = 0;
			zputs("exec 3<&-\n");
			zputs(sh_argv[2]);
			zputs("\n");
		} else if (!argv_script(&st)) {
			return;
		}
		cmd = zygote, zygote_ready = 0;
		sys3(SYS_setpriority, PRIO_PROCESS, cmd.pid, 0);
		write_all(cmd.script, zbuf, zlen);
		sys3(SYS_close, cmd.script, 0, 0);
	} else if (make_proc(&cmd, &st, 0)) {
		return;
	}
	i64 pid = cmd.pid;
	int in[2] = { -1, cmd.in }, o[2] = { cmd.out, -1 }, e[2] = { cmd.err, -1 };
	int stdin_open = 1, outs = 2, broken = 0;
	u64 off = 0; /* payload bytes of the first stdin frame in rbuf already in the pipe */
	/* The host's stdin frames go into the pipe without blocking: a command that
	 * writes before it reads must still be drained (its stdout would fill and
	 * wait on us while we wait on its stdin). */
	sys3(SYS_fcntl, in[1], F_SETFL, O_NONBLOCK);
	struct pollfd p[4] = { { c, POLLIN, 0 }, { o[0], POLLIN, 0 }, { e[0], POLLIN, 0 },
			       { -1, POLLOUT, 0 } };
	while (outs) {
		int blocked = 0;
		while (have >= 5) { /* the stdin frames here, as far as the pipe takes them */
			u32 len = (rbuf[1] & 0xff) | (rbuf[2] & 0xff) << 8 | (rbuf[3] & 0xff) << 16 |
				  (u32)(rbuf[4] & 0xff) << 24;
			if (len > FRAME_MAX) goto abort;
			if (have < 5 + len) break;
			if (rbuf[0] == 0 && stdin_open && len == 0) {
				sys3(SYS_close, in[1], 0, 0), stdin_open = 0;
			}
			while (rbuf[0] == 0 && stdin_open && off < len) {
				i64 w = sys3(SYS_write, in[1], rbuf + 5 + off, len - off);
				if (w == -EAGAIN) {
					blocked = 1;
					break;
				}
				if (w <= 0) { /* the command closed its stdin: the rest is dropped */
					sys3(SYS_close, in[1], 0, 0), stdin_open = 0;
					break;
				}
				off += w;
			}
			if (blocked) break;
			off = 0;
			consume(&have, 5 + len);
		}
		p[3].fd = blocked ? in[1] : -1;
		/* More from the host only when there is room and the pipe is not full. */
		p[0].events = !blocked && have < sizeof(rbuf) ? POLLIN : 0;
		p[0].revents = 0;
		if (sys3(SYS_poll, p, 4, -1) < 0) continue;
		for (int i = 1; i < 3; i++) {
			if (!p[i].revents) continue;
			i64 r = sys3(SYS_read, p[i].fd, buf + 5, FRAME_MAX);
			if (r > 0) {
				if (frame(c, i, buf, r)) goto abort;
			} else {
				p[i].fd = -1; /* ignored by poll from now on */
				outs--;
			}
		}
		if (!p[0].revents) continue;
		i64 r = sys3(SYS_read, c, rbuf + have, sizeof(rbuf) - have);
		if (r <= 0) { /* the host went away or shut its side: no more stdin */
			p[0].fd = -1;
			if (stdin_open) sys3(SYS_close, in[1], 0, 0), stdin_open = 0;
			continue;
		}
		have += r;
	}
	if (0) {
abort: /* the host broke the protocol or went away: the command goes too */
		broken = 1;
		sys3(SYS_kill, pid, SIGKILL, 0);
	}
	if (stdin_open) sys3(SYS_close, in[1], 0, 0);
	sys3(SYS_close, o[0], 0, 0);
	sys3(SYS_close, e[0], 0, 0);
	int status = 0;
	sys4(SYS_wait4, pid, &status, 0, 0);
	if (broken) return;
	u32 code = (status & 0x7f) ? 128 + (status & 0x7f) : (status >> 8) & 0xff;
	buf[5] = code, buf[6] = code >> 8, buf[7] = code >> 16, buf[8] = code >> 24;
	frame(c, 3, buf, 4);
}

/* A worker: one session after another on the shared listener. A first
 * worker loads its zygote, says so on `ready` and waits for the end of `go`
 * (the listener is listening from then on); a replacement starts at once. */
static __attribute__((noreturn)) void worker(int s, int ready, int go)
{
	if (ready >= 0) {
		prepare_zygote(1);
		char b = 'r';
		write_all(ready, &b, 1);
		sys3(SYS_close, ready, 0, 0);
		while (sys3(SYS_read, go, &b, 1) > 0) {
		}
		sys3(SYS_close, go, 0, 0);
	}
	for (;;) {
		prepare_zygote(0);
		int c = sys3(SYS_accept, s, 0, 0);
		if (c < 0) continue;
		session(c);
		sys3(SYS_close, c, 0, 0);
	}
}

int main(int argc, char **argv)
{
	for (char **e = argv + argc + 1; *e; e++)
		if (starts(*e, "GLIBC_TUNABLES=")) sh_env[1] = *e;
	u32 port = 52;
	if (argc >= 2 && argv[1][0] == '-' && argv[1][1] == '-' && argv[1][2] == 's') {
		sigpipe(1);
		prepare_zygote(1);
		session(0);
		return 0;
	}
	if (argc >= 2) {
		port = 0;
		for (const char *s = argv[1]; *s >= '0' && *s <= '9'; s++) port = port * 10 + (*s - '0');
	}
	sigpipe(1);
	int s = sys3(SYS_socket, AF_VSOCK, SOCK_STREAM, 0);
	struct sockaddr_vm addr = { AF_VSOCK, 0, port, VMADDR_CID_ANY, { 0 } };
	if (s < 0 || sys3(SYS_bind, s, &addr, sizeof(addr))) {
		out("ember-agent: cannot listen on vsock\n");
		return 1;
	}
	/* Listening (and so answering the host) only once every worker has its
	 * zygote loaded: a snapshot taken when the agent answers holds them all. */
	int ready[2], go[2];
	if (sys3(SYS_pipe, ready, 0, 0) || sys3(SYS_pipe, go, 0, 0)) return 1;
	for (int i = 0; i < WORKERS; i++)
		if (sys3(SYS_fork, 0, 0, 0) == 0) {
			sys3(SYS_close, ready[0], 0, 0);
			sys3(SYS_close, go[1], 0, 0);
			worker(s, ready[1], go[0]);
		}
	sys3(SYS_close, ready[1], 0, 0);
	sys3(SYS_close, go[0], 0, 0);
	char b[WORKERS];
	for (int got = 0; got < WORKERS;) {
		i64 r = sys3(SYS_read, ready[0], b, WORKERS - got);
		if (r <= 0) break;
		got += r;
	}
	sys3(SYS_close, ready[0], 0, 0);
	if (sys3(SYS_listen, s, 8, 0)) {
		out("ember-agent: cannot listen on vsock\n");
		return 1;
	}
	sys3(SYS_close, go[1], 0, 0);
	out("ember-agent: listening\n");
	for (;;) { /* a worker that died is replaced */
		if (sys4(SYS_wait4, -1, 0, 0, 0) > 0 && sys3(SYS_fork, 0, 0, 0) == 0) worker(s, -1, -1);
	}
}

__asm__(".text\n.global _start\n_start:\n"
	" xor %rbp, %rbp\n"
	" mov (%rsp), %rdi\n"        /* argc */
	" lea 8(%rsp), %rsi\n"       /* argv */
	" and $-16, %rsp\n"
	" call main\n"
	" mov %eax, %edi\n"
	" mov $60, %eax\n"
	" syscall\n");
