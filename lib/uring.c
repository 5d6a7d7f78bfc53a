/* uring.c — one batch of madvise calls, through io_uring or plain madvise(2).
 *
 * With SPANALLOC_URING=on the batch becomes one IORING_OP_MADVISE request per range, submitted
 * together with a single io_uring_enter (io_uring_submit_and_wait); the kernel runs each
 * madvise on an io-wq worker (REQ_F_FORCE_ASYNC) and posts a completion with the result.
 * Whatever io_uring cannot do falls back to madvise(2) range by range, so no page is lost:
 *   - the ring cannot be created (ENOSYS, io_uring_disabled sysctl, seccomp: EPERM): io_uring
 *     is switched off for the process and every batch uses madvise(2);
 *   - the submission fails: the whole batch is redone with madvise(2);
 *   - a completion reports an error (an old kernel without IORING_OP_MADVISE says EINVAL): that
 *     range is redone with madvise(2).
 * The ring is created lazily by the first caller and shared under uring_lock (the scavenger
 * thread, and sa_release or the memory-limit path in other threads). It is created without
 * allocating from the heap (liburing maps its rings with mmap). A forked child drops its copy.
 *
 * sa_uring_inject lets the tests force each failure (1: ring creation, 2: submission,
 * 3: every completion — by submitting an invalid advice, a real kernel error).
 */
#include "internal.h"

#include <errno.h>
#include <liburing.h>
#include <sys/mman.h>

#define RING_ENTRIES 64

int sa_uring_inject;

static pthread_mutex_t uring_lock = PTHREAD_MUTEX_INITIALIZER;
static struct io_uring ring;
static int ring_state; /* 0 not tried, 1 ready, -1 unavailable */

static bool ring_ready(void)
{
	if (ring_state == 0) {
		int r = sa_uring_inject == 1 ? -ENOSYS : io_uring_queue_init(RING_ENTRIES, &ring, 0);
		ring_state = r == 0 ? 1 : -1;
	}
	return ring_state == 1;
}

static size_t madvise_all(const scav_range_t *r, size_t n, const bool *done)
{
	size_t ok = 0;
	for (size_t i = 0; i < n; i++) {
		if (done && done[i])
			continue;
		int adv = r[i].advice;
		if (madvise((void *)r[i].base, r[i].len, adv) != 0 && adv == MADV_FREE)
			if (madvise((void *)r[i].base, r[i].len, MADV_DONTNEED) != 0)
				continue;
		ok++;
	}
	return ok;
}

size_t uring_madvise_batch(const scav_range_t *r, size_t n, size_t *fallbacks, bool *used_uring)
{
	*used_uring = false;
	if (n == 0)
		return 0;
	if (!sa_config.uring)
		return madvise_all(r, n, NULL);
	pthread_mutex_lock(&uring_lock);
	if (!ring_ready()) {
		pthread_mutex_unlock(&uring_lock);
		(*fallbacks)++;
		return madvise_all(r, n, NULL);
	}
	size_t ok = 0, left = n;
	while (left > 0) {
		size_t m = left < RING_ENTRIES ? left : RING_ENTRIES;
		const scav_range_t *b = r + (n - left);
		bool done[RING_ENTRIES] = {false};
		for (size_t i = 0; i < m; i++) {
			struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
			int adv = sa_uring_inject == 3 ? -1 : b[i].advice;
			io_uring_prep_madvise(sqe, (void *)b[i].base, (__u32)b[i].len, adv);
			io_uring_sqe_set_data64(sqe, i);
		}
		int sub = sa_uring_inject == 2 ? -EBUSY : io_uring_submit_and_wait(&ring, (unsigned)m);
		if (sub < 0) {
			/* Nothing (or an unknown part) was submitted: take the queued SQEs back by
			 * rebuilding the ring, and advise the batch directly. */
			io_uring_queue_exit(&ring);
			ring_state = 0;
			(*fallbacks)++;
			ok += madvise_all(b, m, NULL);
			if (!ring_ready()) {
				pthread_mutex_unlock(&uring_lock);
				return ok + madvise_all(b + m, left - m, NULL);
			}
			left -= m;
			continue;
		}
		*used_uring = true;
		size_t seen = 0, failed = 0;
		while (seen < m) {
			struct io_uring_cqe *cqe;
			if (io_uring_wait_cqe(&ring, &cqe) != 0)
				break;
			uint64_t i = io_uring_cqe_get_data64(cqe);
			if (cqe->res >= 0 && i < m) {
				done[i] = true;
				ok++;
			} else {
				failed++;
			}
			io_uring_cqe_seen(&ring, cqe);
			seen++;
		}
		if (failed || seen < m) {
			(*fallbacks)++;
			ok += madvise_all(b, m, done);
		}
		left -= m;
	}
	pthread_mutex_unlock(&uring_lock);
	return ok;
}

void uring_fork_child(void)
{
	pthread_mutex_init(&uring_lock, NULL);
	if (ring_state == 1)
		io_uring_queue_exit(&ring); /* the child's own mapping and fd; the parent's ring lives on */
	ring_state = 0;
}
