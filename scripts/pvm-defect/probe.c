/*
 * pvm-probe: a freestanding static guest program (no libc) that checks, right after
 * exec, the memory a new process gets from the kernel and from its own first stores:
 * argv/envp/auxv (copied by execve), .data (ELF file pages), .bss (cleared by the ELF
 * loader and fresh anonymous pages), a brk block set up the way glibc's static start-up
 * sets up TLS (user-mode copy, arch_prctl(ARCH_SET_FS), a load at %fs:-0x90), fresh
 * stack pages and an anonymous mmap. It prints one `PROBE-BAD` line per failed check and
 * exits 1; silent and exit 0 when everything matched.
 *
 *   pvm-probe                 run the checks (once, in this freshly exec'd process)
 *   pvm-probe fork N          fork N children that run the brk/TLS, stack and mmap
 *                             checks without exec (their .data/.bss are inherited)
 *   pvm-probe write N         checks, then write N KiB of a known pattern to stdout
 *   pvm-probe read N          checks, then read N KiB from stdin and compare
 *
 * Build: gcc -static -nostdlib -O2 -fno-stack-protector -fno-builtin -no-pie -o pvm-probe probe.c
 * Used by scripts/bench-pvm-defect.sh; docs/pvm-defect.md has the results.
 */
typedef unsigned long u64;

static long sys(long n, long a, long b, long c)
{
	long r;
	__asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c)
			 : "rcx", "r11", "memory");
	return r;
}
static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
	long r;
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;
	__asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10),
			 "r"(r8), "r"(r9) : "rcx", "r11", "memory");
	return r;
}
#define SYS_read 0
#define SYS_write 1
#define SYS_mmap 9
#define SYS_brk 12
#define SYS_getpid 39
#define SYS_fork 57
#define SYS_exit 60
#define SYS_wait4 61
#define SYS_arch_prctl 158
#define ARCH_SET_FS 0x1002

#define PATTERN 0x5a5aa5a5c3c33c3cUL
/* .data: 3 pages that come from the ELF file */
static volatile u64 data_words[1536] = { [0 ... 1535] = PATTERN };
/* .bss: the tail of the last file page is cleared by the loader, the rest is fresh */
static volatile u64 bss_words[4096];
static int bad;
static long mypid;

static unsigned long slen(const char *s)
{
	unsigned long n = 0;
	while (s[n])
		n++;
	return n;
}
static void out(const char *s) { sys(SYS_write, 2, (long)s, slen(s)); }
static char *hex(char *p, u64 v)
{
	for (int i = 60; i >= 0; i -= 4)
		*p++ = "0123456789abcdef"[(v >> i) & 15];
	return p;
}
static char *str(char *p, const char *s)
{
	while (*s)
		*p++ = *s++;
	return p;
}
/* One line per failed check: PROBE-BAD pid=... check=... at=... got=... want=... */
static void report(const char *check, u64 at, u64 got, u64 want)
{
	char line[160], *p = line;
	p = str(p, "PROBE-BAD pid=");
	p = hex(p, (u64)mypid);
	p = str(p, " check=");
	p = str(p, check);
	p = str(p, " at=");
	p = hex(p, at);
	p = str(p, " got=");
	p = hex(p, got);
	p = str(p, " want=");
	p = hex(p, want);
	*p++ = '\n';
	sys(SYS_write, 2, (long)line, p - line);
	bad++;
}

/* glibc-like TLS: a brk block, an initial image copied in user mode, FS pointed at its
 * end, then a load at %fs:-0x90 (glibc's locale slot) and a direct load. */
static void check_tls(void)
{
	u64 start = (u64)sys(SYS_brk, 0, 0, 0);
	u64 end = (u64)sys(SYS_brk, (long)(start + 8192), 0, 0);
	if (end < start + 8192) {
		report("brk", start, end, start + 8192);
		return;
	}
	volatile u64 *blk = (volatile u64 *)start;
	u64 tag = PATTERN ^ ((u64)mypid << 32);
	for (int i = 0; i < 1024; i++)
		blk[i] = tag + i;
	u64 tp = start + 4096;
	blk[512] = tp; /* the TCB's self pointer, as glibc's */
	sys(SYS_arch_prctl, ARCH_SET_FS, (long)tp, 0);
	u64 v;
	__asm__ volatile("mov %%fs:-0x90, %0" : "=r"(v) : : "memory");
	u64 want = tag + (4096 - 0x90) / 8;
	if (v != want)
		report("tls-fs", tp - 0x90, v, want);
	__asm__ volatile("mov %%fs:0, %0" : "=r"(v) : : "memory");
	if (v != tp)
		report("tls-self", tp, v, tp);
	for (int i = 0; i < 1024; i++)
		if (i != 512 && blk[i] != tag + i)
			report("brk-page", (u64)&blk[i], blk[i], tag + i);
}

static void check_image(int argc, char **argv, char **envp)
{
	for (int i = 0; i < 1536; i++)
		if (data_words[i] != PATTERN) {
			report("data", (u64)&data_words[i], data_words[i], PATTERN);
			break;
		}
	for (int i = 0; i < 4096; i++)
		if (bss_words[i] != 0) {
			report("bss", (u64)&bss_words[i], bss_words[i], 0);
			break;
		}
	/* argv[0] is the path; every env string must start with a letter and have '=' */
	if (argc < 1 || argv[argc] != 0)
		report("argv", (u64)argv, argc, 0);
	for (char **e = envp; *e; e++) {
		const char *s = *e;
		int eq = 0;
		for (; *s; s++)
			eq |= *s == '=';
		if (!eq)
			report("envp", (u64)*e, (u64)(*e)[0], '=');
	}
	u64 *aux = (u64 *)envp;
	while (*aux)
		aux++;
	aux++;
	extern char _start[];
	int seen = 0;
	for (; aux[0]; aux += 2) {
		if (aux[0] == 6 && aux[1] != 4096) /* AT_PAGESZ */
			report("auxv-pagesz", (u64)aux, aux[1], 4096);
		if (aux[0] == 9) { /* AT_ENTRY */
			seen++;
			if (aux[1] != (u64)_start)
				report("auxv-entry", (u64)aux, aux[1], (u64)_start);
		}
	}
	if (!seen)
		report("auxv-missing", (u64)aux, 0, 9);
}

static void check_stack_and_mmap(void)
{
	volatile u64 buf[2048]; /* 16 KiB of stack, mostly fresh pages */
	u64 tag = PATTERN ^ (u64)mypid;
	for (int i = 0; i < 2048; i++)
		buf[i] = tag + i;
	for (int i = 0; i < 2048; i++)
		if (buf[i] != tag + i) {
			report("stack", (u64)&buf[i], buf[i], tag + i);
			break;
		}
	volatile u64 *m = (volatile u64 *)sys6(SYS_mmap, 0, 8192, 3, 0x22, -1, 0);
	if ((long)m < 0 && (long)m > -4096) {
		report("mmap", 0, (u64)m, 0);
		return;
	}
	for (int i = 0; i < 1024; i++)
		if (m[i] != 0) {
			report("mmap-zero", (u64)&m[i], m[i], 0);
			break;
		}
	for (int i = 0; i < 1024; i++)
		m[i] = tag - i;
	for (int i = 0; i < 1024; i++)
		if (m[i] != tag - i) {
			report("mmap-page", (u64)&m[i], m[i], tag - i);
			break;
		}
}

static long num(const char *s)
{
	long n = 0;
	while (s && *s >= '0' && *s <= '9')
		n = n * 10 + (*s++ - '0');
	return n;
}
static int same(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return *a == *b;
}

static void pipe_write(long kib)
{
	static u64 buf[128]; /* 1 KiB */
	for (long k = 0; k < kib; k++) {
		for (int i = 0; i < 128; i++)
			buf[i] = PATTERN + k * 128 + i;
		sys(SYS_write, 1, (long)buf, sizeof buf);
	}
}
static void pipe_read(long kib)
{
	static u64 buf[128];
	for (long k = 0; k < kib; k++) {
		long got = 0;
		while (got < (long)sizeof buf) {
			long n = sys(SYS_read, 0, (long)buf + got, sizeof buf - got);
			if (n <= 0) {
				report("pipe-short", k, got, sizeof buf);
				return;
			}
			got += n;
		}
		for (int i = 0; i < 128; i++)
			if (buf[i] != PATTERN + k * 128 + i) {
				report("pipe-data", k * 1024 + i * 8, buf[i], PATTERN + k * 128 + i);
				break;
			}
	}
}

int probe_main(int argc, char **argv, char **envp)
{
	mypid = sys(SYS_getpid, 0, 0, 0);
	check_tls();
	check_image(argc, argv, envp);
	check_stack_and_mmap();
	const char *mode = argc > 1 ? argv[1] : "";
	long n = argc > 2 ? num(argv[2]) : 0;
	if (same(mode, "fork")) {
		for (long i = 0; i < n; i++) {
			long pid = sys(SYS_fork, 0, 0, 0);
			if (pid == 0) {
				bad = 0;
				mypid = sys(SYS_getpid, 0, 0, 0);
				check_tls();
				check_stack_and_mmap();
				sys(SYS_exit, bad != 0, 0, 0);
			}
		}
		int st;
		while (sys6(SYS_wait4, -1, (long)&st, 0, 0, 0, 0) > 0)
			if (st != 0)
				bad++;
	} else if (same(mode, "write")) {
		pipe_write(n);
	} else if (same(mode, "read")) {
		pipe_read(n);
	}
	return bad != 0;
}

/* Entry: rsp points at argc, then argv, NULL, envp, NULL, auxv. */
__asm__(".globl _start\n_start:\n"
	"xor %rbp, %rbp\n"
	"mov (%rsp), %rdi\n"
	"lea 8(%rsp), %rsi\n"
	"lea 16(%rsp,%rdi,8), %rdx\n"
	"and $-16, %rsp\n"
	"call probe_main\n"
	"mov %eax, %edi\n"
	"mov $60, %eax\n"
	"syscall\n");
