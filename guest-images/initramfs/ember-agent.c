/*
 * ember-agent: runs commands for the host over vsock (/bin/ember-agent in the
 * reference initramfs). Static, no libc: raw system calls only.
 *
 *   ember-agent [PORT]   listen on vsock port PORT (default 52), any CID
 *   ember-agent --session  one session on standard input, a connected stream
 *                          socket (tests the protocol where no vsock exists)
 *
 * One session per connection (a forked child each), the protocol of
 * docs/vsock.md ("ember-agent"):
 *   host -> agent   "RUN <shell command>\n" (at most 4095 bytes), or
 *                   "EXEC <n>\n" and n bytes of shell script (at most 65536: any
 *                   bytes but NUL, newlines too; `ember run` sends this), then frames
 *   agent -> host   frames
 * or, to ask whether the agent is up: host "PING\n", agent "PONG\n" and the end
 * of the connection.
 * A frame is a kind byte, a 32-bit little-endian length and that many bytes:
 *   0 stdin (host -> agent; length 0 = end of stdin; at most 4096 bytes)
 *   1 stdout, 2 stderr (agent -> host)
 *   3 exit status (agent -> host, 4 bytes: the exit code, or 128 + signal),
 *     the last frame; the agent closes the connection after it.
 * The command runs as `/bin/sh -c <command>` with the PATH of /init.
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
#define SYS_fork 57
#define SYS_execve 59
#define SYS_exit 60
#define SYS_wait4 61
#define AF_VSOCK 40
#define SOCK_STREAM 1
#define VMADDR_CID_ANY 0xffffffffu
#define POLLIN 1
#define WNOHANG 1
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

static int frame(int fd, int kind, const void *data, u32 len)
{
	unsigned char h[5] = { kind, len, len >> 8, len >> 16, len >> 24 };
	return write_all(fd, h, 5) || write_all(fd, data, len);
}

static char *const sh_env[] = { "PATH=/usr/sbin:/usr/bin:/sbin:/bin", 0 };

static void session(int c)
{
	static char line[LINE_MAX], script[SCRIPT_MAX + 1], buf[FRAME_MAX + 5];
	static char rbuf[2 * (FRAME_MAX + 5)];
	u64 n = 0, have = 0;
	int in[2], o[2], e[2];

	for (;;) { /* the request line, a byte at a time: nothing after it is consumed */
		if (n == LINE_MAX - 1 || sys3(SYS_read, c, line + n, 1) != 1) return;
		if (line[n] == '\n') break;
		n++;
	}
	line[n] = 0;
	char *command = line + 4;
	if (n == 4 && starts(line, "PING")) {
		write_all(c, "PONG\n", 5);
		return;
	}
	if (n > 5 && starts(line, "EXEC ")) {
		u64 len = 0;
		for (const char *s = line + 5; *s; s++) {
			if (*s < '0' || *s > '9' || len > SCRIPT_MAX) return;
			len = len * 10 + (*s - '0');
		}
		if (len > SCRIPT_MAX) return;
		for (u64 got = 0; got < len;) {
			i64 r = sys3(SYS_read, c, script + got, len - got);
			if (r <= 0) return;
			got += r;
		}
		script[len] = 0;
		command = script;
	} else if (n < 4 || !starts(line, "RUN ")) {
		return;
	}
	if (sys3(SYS_pipe, in, 0, 0) || sys3(SYS_pipe, o, 0, 0) || sys3(SYS_pipe, e, 0, 0)) return;
	i64 pid = sys3(SYS_fork, 0, 0, 0);
	if (pid == 0) {
		char *argv[] = { "sh", "-c", command, 0 };
		sys3(SYS_dup2, in[0], 0, 0);
		sys3(SYS_dup2, o[1], 1, 0);
		sys3(SYS_dup2, e[1], 2, 0);
		for (int fd = 3; fd < 16; fd++) sys3(SYS_close, fd, 0, 0);
		sys3(SYS_execve, "/bin/sh", argv, sh_env);
		exit_(127);
	}
	if (pid < 0) return;
	sys3(SYS_close, in[0], 0, 0);
	sys3(SYS_close, o[1], 0, 0);
	sys3(SYS_close, e[1], 0, 0);
	int stdin_open = 1, outs = 2;
	struct pollfd p[3] = { { c, POLLIN, 0 }, { o[0], POLLIN, 0 }, { e[0], POLLIN, 0 } };
	while (outs) {
		if (sys3(SYS_poll, p, 3, -1) < 0) continue;
		for (int i = 1; i < 3; i++) {
			if (!p[i].revents) continue;
			i64 r = sys3(SYS_read, p[i].fd, buf, FRAME_MAX);
			if (r > 0) {
				if (frame(c, i, buf, r)) return;
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
		while (have >= 5) {
			u32 len = (rbuf[1] & 0xff) | (rbuf[2] & 0xff) << 8 | (rbuf[3] & 0xff) << 16 |
				  (u32)(rbuf[4] & 0xff) << 24;
			if (len > FRAME_MAX) return;
			if (have < 5 + len) break;
			if (rbuf[0] == 0 && stdin_open) {
				if (len == 0) sys3(SYS_close, in[1], 0, 0), stdin_open = 0;
				else write_all(in[1], rbuf + 5, len);
			}
			for (u64 k = 5 + len; k < have; k++) rbuf[k - 5 - len] = rbuf[k];
			have -= 5 + len;
		}
	}
	if (stdin_open) sys3(SYS_close, in[1], 0, 0);
	int status = 0;
	sys4(SYS_wait4, pid, &status, 0, 0);
	u32 code = (status & 0x7f) ? 128 + (status & 0x7f) : (status >> 8) & 0xff;
	unsigned char le[4] = { code, code >> 8, code >> 16, code >> 24 };
	frame(c, 3, le, 4);
}

int main(int argc, char **argv)
{
	u32 port = 52;
	if (argc >= 2 && argv[1][0] == '-' && argv[1][1] == '-' && argv[1][2] == 's') {
		session(0);
		return 0;
	}
	if (argc >= 2) {
		port = 0;
		for (const char *s = argv[1]; *s >= '0' && *s <= '9'; s++) port = port * 10 + (*s - '0');
	}
	int s = sys3(SYS_socket, AF_VSOCK, SOCK_STREAM, 0);
	struct sockaddr_vm addr = { AF_VSOCK, 0, port, VMADDR_CID_ANY, { 0 } };
	if (s < 0 || sys3(SYS_bind, s, &addr, sizeof(addr)) || sys3(SYS_listen, s, 8, 0)) {
		out("ember-agent: cannot listen on vsock\n");
		return 1;
	}
	out("ember-agent: listening\n");
	for (;;) {
		int c = sys3(SYS_accept, s, 0, 0);
		while (sys4(SYS_wait4, -1, 0, WNOHANG, 0) > 0) {
		}
		if (c < 0) continue;
		if (sys3(SYS_fork, 0, 0, 0) == 0) {
			sys3(SYS_close, s, 0, 0);
			session(c);
			exit_(0);
		}
		sys3(SYS_close, c, 0, 0);
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
