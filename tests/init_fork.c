/* init_fork — fork while another thread is half way through spanalloc's initialisation.
 *
 * A test hook (sa_init_hook) holds the initialising thread inside init_heap after it claimed
 * the work; the main thread forks at that moment. The child's first allocation must build a
 * heap of its own instead of waiting for a parent thread that does not exist in the child
 * (before init.c kept the claimant's pid, the child spun forever: the alarm below catches it).
 * Then the parent lets its initialiser finish and both processes allocate and free.
 * Links the convenience library (malloc stays glibc's), so nothing initialises spanalloc
 * before the test does. Exit 0 on success, 1 with a message otherwise.
 */
#include "internal.h"
#include "spanalloc.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static atomic_int in_init, release_init;

static void hold_init(void)
{
	atomic_store(&in_init, 1);
	while (!atomic_load(&release_init))
		usleep(1000);
}

static void *first_malloc(void *arg)
{
	(void)arg;
	return sa_malloc(100);
}

/* Allocate and free across classes and one large size; 0 when every block kept its bytes. */
static int exercise(void)
{
	static const size_t sizes[] = {8, 100, 1000, 4096, 20000, 300000};
	void *p[6];
	for (int i = 0; i < 6; i++) {
		p[i] = sa_malloc(sizes[i]);
		if (p[i] == NULL)
			return 1;
		memset(p[i], i + 1, sizes[i]);
	}
	for (int i = 0; i < 6; i++) {
		for (size_t j = 0; j < sizes[i]; j++)
			if (((unsigned char *)p[i])[j] != i + 1)
				return 1;
		sa_free(p[i]);
	}
	return 0;
}

int main(void)
{
	sa_init_hook = hold_init;
	pthread_t t;
	if (pthread_create(&t, NULL, first_malloc, NULL) != 0) {
		fprintf(stderr, "init_fork: pthread_create failed\n");
		return 1;
	}
	while (!atomic_load(&in_init))
		usleep(1000);
	pid_t pid = fork();
	if (pid == 0) {
		alarm(20); /* a child waiting for the parent's initialiser never gets here in time */
		sa_init_hook = NULL;
		_exit(exercise() != 0 || !atomic_load(&sa_inited) ? 1 : 0);
	}
	if (pid < 0) {
		fprintf(stderr, "init_fork: fork failed\n");
		return 1;
	}
	atomic_store(&release_init, 1);
	void *p;
	pthread_join(t, &p);
	if (p == NULL || exercise() != 0) {
		fprintf(stderr, "init_fork: the parent's heap does not work after the fork\n");
		return 1;
	}
	sa_free(p);
	int st;
	if (waitpid(pid, &st, 0) != pid) {
		fprintf(stderr, "init_fork: waitpid failed\n");
		return 1;
	}
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "init_fork: child %s %d (a hang ends in SIGALRM = %d)\n",
			WIFSIGNALED(st) ? "killed by signal" : "exited", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st),
			SIGALRM);
		return 1;
	}
	printf("init_fork: child forked during initialisation built its own heap; parent fine\n");
	return 0;
}
