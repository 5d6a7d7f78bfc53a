/* rseq.c — restartable-sequence registration, the CPU count and cross-CPU fences.
 *
 * glibc 2.35+ registers a struct rseq for every thread and publishes where it is: the area sits at
 * the thread pointer + __rseq_offset and __rseq_size says whether it is registered (0: not, as
 * under GLIBC_TUNABLES=glibc.pthread.rseq=0 or valgrind). When it is, spanalloc uses glibc's area
 * and never registers its own (a second registration would fail with EBUSY). When it is not,
 * spanalloc registers an initial-exec TLS struct rseq of its own, per thread, on the first
 * allocation that misses (cpu_id reads as -1 until then, which sends the fast path to the slow
 * path), and unregisters it at thread exit. If the main thread cannot register (ENOSYS, EBUSY,
 * EPERM under seccomp ...), per-CPU caches stay off and the per-thread fallback runs.
 * Only ABI fields are used: cpu_id (read inside the critical sections) and rseq_cs (armed by
 * them); nothing is overlaid on cpu_id_start (DESIGN.md section 4).
 *
 * A thread changing another CPU's slab (drain) first makes every sequence in flight there restart:
 * membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, MEMBARRIER_CMD_FLAG_CPU, cpu), after one
 * MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ per process (again in a forked child).
 *
 * Nothing here allocates: initialisation runs inside the first malloc.
 */
#include "internal.h"

#include <errno.h>
#include <linux/membarrier.h>
#include <string.h>
#include <sys/rseq.h>
#include <sys/syscall.h>
#include <unistd.h>

long sa_rseq_off;
unsigned long sa_rseq_aborts;

/* glibc's exports (ld.so, GLIBC_2.35); weak, so a libc without them leaves them NULL. */
extern const ptrdiff_t __rseq_offset __attribute__((weak));
extern const unsigned int __rseq_size __attribute__((weak));

static __thread struct rseq own_rseq __attribute__((tls_model("initial-exec"))) = {
	.cpu_id = (uint32_t)RSEQ_CPU_ID_UNINITIALIZED,
};

static int rseq_mode;

static inline char *thread_pointer(void)
{
	char *tp;
	__asm__("movq %%fs:0, %0" : "=r"(tp));
	return tp;
}

static long sys_rseq(struct rseq *r, uint32_t len, int flags, uint32_t sig)
{
	return syscall(__NR_rseq, r, len, flags, sig);
}

bool rseq_register_thread(void)
{
	if (sys_rseq(&own_rseq, sizeof own_rseq, 0, RSEQ_SIG) != 0)
		return false;
	return true;
}

void rseq_unregister_thread(void)
{
	memset(&own_rseq.rseq_cs, 0, sizeof own_rseq.rseq_cs);
	sys_rseq(&own_rseq, sizeof own_rseq, RSEQ_FLAG_UNREGISTER, RSEQ_SIG);
	own_rseq.cpu_id = (uint32_t)RSEQ_CPU_ID_UNINITIALIZED;
}

int rseq_init(const char **why)
{
	*why = "";
	if (&__rseq_size != NULL && &__rseq_offset != NULL && __rseq_size > 0) {
		sa_rseq_off = (long)__rseq_offset;
		rseq_mode = RSEQ_MODE_GLIBC;
		return rseq_mode;
	}
	/* glibc did not register: try our own in this (the initialising) thread */
	if (!rseq_register_thread()) {
		*why = errno == ENOSYS ? "rseq unavailable (ENOSYS)"
		       : errno == EBUSY ? "rseq registered by someone else (EBUSY)"
					: "rseq registration failed";
		return RSEQ_MODE_NONE;
	}
	sa_rseq_off = (long)((char *)&own_rseq - thread_pointer());
	rseq_mode = RSEQ_MODE_OWN;
	return rseq_mode;
}

/* Per-thread mode: point sa_rseq_off at the thread's own area, never registered then, so its
 * cpu_id stays RSEQ_CPU_ID_UNINITIALIZED (-1): a per-CPU sequence reached for a byte-0 free
 * reads the locked guard header (mcache.c) and goes to its slow path. */
void rseq_idle_area(void)
{
	sa_rseq_off = (long)((char *)&own_rseq - thread_pointer());
}

int rseq_current_cpu(void)
{
	uint32_t cpu;
	__asm__ volatile("movl %%fs:4(%1), %0" : "=r"(cpu) : "r"(sa_rseq_off));
	return cpu < sa_ncpu ? (int)cpu : -1;
}

static bool fence_cpu_flag = true;

bool rseq_fence_init(void)
{
	long r = syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0);
	return r == 0;
}

bool rseq_fence_cpu(int cpu)
{
	if (fence_cpu_flag) {
		if (syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, MEMBARRIER_CMD_FLAG_CPU, cpu) == 0)
			return true;
		if (errno != EINVAL)
			return false;
		fence_cpu_flag = false; /* a kernel before 5.10: fence every CPU */
	}
	return syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, 0, 0) == 0;
}

/* Highest CPU number in /sys/devices/system/cpu/possible ("0-3", "0,2-5,8") plus one: CPUs that
 * are offline, hot-pluggable or outside our cgroup's cpuset are counted, so any cpu_id the kernel
 * reports indexes a slab. 0 when the file cannot be read. */
uint32_t rseq_possible_cpus(void)
{
	char buf[256];
	if (os_read_file("/sys/devices/system/cpu/possible", buf, sizeof buf) <= 0)
		return 0;
	uint32_t max = 0, cur = 0;
	bool any = false, in = false;
	for (char *p = buf; *p; p++) {
		if (*p >= '0' && *p <= '9') {
			cur = in ? cur * 10 + (uint32_t)(*p - '0') : (uint32_t)(*p - '0');
			in = true;
			any = true;
			if (cur > 65536)
				return 0;
		} else {
			if (in && cur > max)
				max = cur;
			in = false;
		}
	}
	if (in && cur > max)
		max = cur;
	return any ? max + 1 : 0;
}
