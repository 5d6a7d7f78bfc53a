/* override_fork — fork from a process whose 8 threads allocate without pause, 1000 times.
 *
 * Each child allocates and frees across size classes (small, large, aligned), starts a
 * thread that allocates too, and exits through exit() (so atexit handlers and spanalloc's
 * destructor run). The parent checks every child exited 0 and no fork took longer than a
 * watchdog allows (a child deadlocked on a lock held at fork time would hang: alarm kills it).
 * The busy threads allocate in bursts with short pauses, so the children get the CPU.
 * Linked with libspanalloc, so malloc is spanalloc's. OVERRIDE_FORKS overrides the count.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "override_common.h"

#define NTHREADS 8
static atomic_int stop;

static void *busy(void *arg)
{
	unsigned long ops = 0;
	uint64_t x = (uintptr_t)arg * 0x9e3779b97f4a7c15ULL + 1;
	void *slots[256] = {0};
	while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		unsigned i = x % 256;
		free(slots[i]);
		size_t n = x % 1000 == 0 ? 40000 + x % 100000 : (x >> 20) % 2000;
		slots[i] = malloc(n);
		if (slots[i])
			memset(slots[i], (int)i, n < 64 ? n : 64);
		/* bursts of 500 operations with a 100 us pause: 8 threads that never pause would
		 * leave the forking thread and each child a time slice in ten on 2 CPUs */
		if (++ops % 500 == 0)
			nanosleep(&(struct timespec){0, 100000}, NULL);
	}
	for (int i = 0; i < 256; i++)
		free(slots[i]);
	return NULL;
}

static void *child_thread(void *arg)
{
	(void)arg;
	void *p[100];
	for (int i = 0; i < 100; i++)
		p[i] = malloc((size_t)i * 37 + 1);
	for (int i = 0; i < 100; i++)
		free(p[i]);
	return malloc(10); /* freed by the joiner */
}

static int child(void)
{
	alarm(10);
	void *p[200];
	for (int i = 0; i < 200; i++) {
		p[i] = i % 50 == 0 ? malloc(100000) : i % 7 == 0 ? memalign(4096, 100) : malloc((size_t)i * 13);
		if (p[i] == NULL)
			return 2;
		memset(p[i], i, 8);
	}
	for (int i = 0; i < 200; i++)
		free(p[i]);
	pthread_t t;
	void *r;
	if (pthread_create(&t, NULL, child_thread, NULL) != 0 || pthread_join(t, &r) != 0)
		return 3;
	free(r);
	return malloc_usable_size(malloc(20)) == 32 ? 0 : 4;
}

int main(int argc, char **argv)
{
	/* A hugetlb page written by parent and child after fork needs a second huge page; with the
	 * pool empty the kernel sends the child SIGBUS (README, Known limits). This test is about
	 * locks and caches across fork, so it runs on THP whatever the machine's hugetlb pool: the
	 * knob is read at initialisation, which may precede main, hence the re-exec. */
	if (argc > 0 && getenv("SPANALLOC_HUGEPAGES") == NULL) {
		setenv("SPANALLOC_HUGEPAGES", "thp", 1);
		execv("/proc/self/exe", argv);
		perror("override_fork: execv");
		return 1;
	}
	require_spanalloc_malloc("override_fork");
	int forks = getenv("OVERRIDE_FORKS") ? atoi(getenv("OVERRIDE_FORKS")) : 1000;
	pthread_t t[NTHREADS];
	for (uintptr_t i = 0; i < NTHREADS; i++)
		pthread_create(&t[i], NULL, busy, (void *)(i + 1));
	int bad = 0;
	for (int k = 0; k < forks; k++) {
		pid_t pid = fork();
		if (pid < 0) {
			perror("fork");
			return 1;
		}
		if (pid == 0)
			exit(child());
		int st;
		if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			fprintf(stderr, "override_fork: child %d of %d: status %#x\n", k, forks, st);
			if (++bad > 5)
				break;
		}
	}
	atomic_store(&stop, 1);
	for (int i = 0; i < NTHREADS; i++)
		pthread_join(t[i], NULL);
	printf("%s: override_fork: %d forks from %d allocating threads, %d bad children\n", bad ? "FAIL" : "PASS",
	       forks, NTHREADS, bad);
	return bad ? 1 : 0;
}
