/* override_steal_scav — capacity steals and drains must not start the scavenger thread while
 * they hold a per-CPU cache's lock.
 *
 * The first free pages of a process ask for the scavenger thread, and whoever next calls
 * scav_poll starts it: pthread_create allocates the new thread's DTV with calloc, and on a CPU
 * whose cache for that class is empty and at its byte budget that calloc grows the class, which
 * takes the CPU's lock. A steal (and a drain) flushes objects to mcentral under that lock; when
 * mcentral_flush polled the scavenger itself, a steal that emptied the process's first spans
 * deadlocked on its own lock — with every signal blocked (scav_poll blocks them around
 * pthread_create), so only SIGKILL ends it. Steal and drain now flush without polling and poll
 * after unlocking.
 *
 * The parent re-executes this program with SPANALLOC_CPU_CACHE_BYTES=64k (a budget the bulk
 * pattern below keeps full, so frees steal) and kills it with SIGKILL if it has not finished in
 * 120 s. The child: 1M objects of 16-256 bytes, then all freed, twice — the pattern that hung
 * perf/bench bulk before the fix. Linked with libspanalloc, so pthread_create's calloc is
 * spanalloc's. Skipped (77) when malloc is not spanalloc's.
 */
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "override_common.h"

static int child(void)
{
	enum { COUNT = 1000000 };
	static void *v[COUNT];
	uint64_t x = 42;
	for (int r = 0; r < 2; r++) {
		for (int i = 0; i < COUNT; i++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			size_t sz = 16 + x % 241;
			unsigned char *p = malloc(sz);
			if (p == NULL)
				return 1;
			p[0] = (unsigned char)sz;
			p[sz - 1] = (unsigned char)i;
			v[i] = p;
		}
		for (int i = 0; i < COUNT; i++)
			free(v[i]);
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "child") == 0)
		return child();
	require_spanalloc_malloc("override_steal_scav");
	pid_t pid = fork();
	if (pid < 0)
		return 1;
	if (pid == 0) {
		setenv("SPANALLOC_CPU_CACHE_BYTES", "64k", 1);
		execl("/proc/self/exe", argv[0], "child", (char *)NULL);
		_exit(3);
	}
	int status = 0;
	for (int tick = 0; tick < 1200; tick++) { /* 120 s */
		pid_t r = waitpid(pid, &status, WNOHANG);
		if (r == pid) {
			if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
				printf("PASS: override_steal_scav: bulk pattern at a 64 KiB per-CPU budget finished\n");
				return 0;
			}
			printf("FAIL: override_steal_scav: child status 0x%x\n", (unsigned)status);
			return 1;
		}
		struct timespec ts = {0, 100 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	printf("FAIL: override_steal_scav: hung for 120 s (a steal or drain deadlocked), killed\n");
	return 1;
}
