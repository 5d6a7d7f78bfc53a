/* select.c — sa_select, Go's selectgo for threads.
 *
 * Design. A select is three passes over its cases with every involved channel locked:
 *   pass 1  visit the cases in a random order (pollorder) and perform the first one that can
 *           proceed now: a partner parked on the opposite queue, buffer data or room, or a
 *           closed channel. A uniformly random permutation makes every ready case equally
 *           likely to be first, which is Go's fairness guarantee; nothing else is needed.
 *           Buffered channels also move lock-free (chan.c), so before blocking pass 1 runs
 *           once more after setting CHAN_F_WAIT on each of them: from then on their rings
 *           change only under the locks we hold, so "nothing ready" stays true.
 *   pass 2  nothing ready and blocking allowed: put one sudog per case on its channel's queue
 *           (all pointing to this thread's chang), unlock, park. Unlocking makes each channel's
 *           WAIT flag agree with its queues again (chan_unlock_c).
 *   pass 3  woken: relock and take every sudog except the winner off its queue.
 *
 * Invariants and why they hold:
 *   - Channels are locked in increasing address order (lockorder), each once even when it
 *     appears in several cases, so two selects (or a select and chansend) never deadlock.
 *   - Exactly one case completes: a partner must win the CAS on g->selectdone before it
 *     touches our sudog's element, and only one CAS can win. A partner that loses drops our
 *     sudog from its queue and moves on, which is why pass 3 removes only sudogs still queued.
 *     A timeout is just another contender for the same CAS, so a select never both times out
 *     and completes a case.
 *   - g->param names the winning sudog, and its caseidx the case; success false means the
 *     channel was closed (receive: destination zeroed; send: EPIPE, Go's panic).
 *   - A NULL channel is left out of both orders, so it can never be ready, like nil in Go;
 *     a select of only NULL channels blocks until its timeout (forever without one).
 *
 * Memory. Up to CHAN_TLS_CASES cases use the thread's TLS sudogs and order arrays, so a
 * typical select does not allocate; larger selects take one sa_malloc block for both.
 */
#include "chan.h"

#include <limits.h>

static inline uintptr_t case_key(const sa_select_case_t *cases, uint32_t i)
{
	return (uintptr_t)cases[i].chan;
}

/* Heap sort of lockorder by channel address: O(n log n) without recursion or allocation,
 * and no need for stability since equal keys are the same channel. */
static void sift_down(const sa_select_case_t *cases, uint32_t *a, size_t root, size_t n)
{
	for (;;) {
		size_t child = 2 * root + 1;
		if (child >= n)
			return;
		if (child + 1 < n && case_key(cases, a[child + 1]) > case_key(cases, a[child]))
			child++;
		if (case_key(cases, a[root]) >= case_key(cases, a[child]))
			return;
		uint32_t t = a[root];
		a[root] = a[child];
		a[child] = t;
		root = child;
	}
}

static void sort_lockorder(const sa_select_case_t *cases, uint32_t *a, size_t n)
{
	for (size_t i = n / 2; i-- > 0;)
		sift_down(cases, a, i, n);
	for (size_t end = n; end-- > 1;) {
		uint32_t t = a[0];
		a[0] = a[end];
		a[end] = t;
		sift_down(cases, a, 0, end);
	}
}

static void sellock(const sa_select_case_t *cases, const uint32_t *lockorder, size_t n)
{
	hchan *prev = NULL;
	for (size_t k = 0; k < n; k++) {
		hchan *c = cases[lockorder[k]].chan;
		if (c != prev)
			chan_lock(&c->lock);
		prev = c;
	}
}

static void selunlock(const sa_select_case_t *cases, const uint32_t *lockorder, size_t n)
{
	hchan *prev = NULL;
	for (size_t k = 0; k < n; k++) {
		hchan *c = cases[lockorder[k]].chan;
		if (c != prev)
			chan_unlock_c(c); /* CHAN_F_WAIT follows the queues */
		prev = c;
	}
}

/* Before parking: shut the lock-free paths of every buffered channel involved (chan.c,
 * "Why no wake-up is lost"). */
static bool selsetwait(const sa_select_case_t *cases, const uint32_t *lockorder, size_t n)
{
	bool changed = false;
	for (size_t k = 0; k < n; k++) {
		hchan *c = cases[lockorder[k]].chan;
		if (c->dataqsiz != 0 && !c->waitflag) {
			chan_set_wait(c);
			changed = true;
		}
	}
	return changed; /* false: nothing could have changed behind the locks */
}

/* Pass 1 for one case, all channels locked. Returns true and unlocks everything when the
 * case proceeded; a partner sudog, if any, is woken after the unlock. */
static bool try_case(sa_select_case_t *cas, const sa_select_case_t *cases,
		     const uint32_t *lockorder, size_t n)
{
	hchan *c = cas->chan;
	sudog *sg;
	if (cas->dir == SA_SELECT_RECV) {
		if ((sg = waitq_dequeue(&c->sendq)) != NULL) {
			chan_recv_from(c, sg, cas->elem);
			selunlock(cases, lockorder, n);
			chan_ready(sg);
			cas->status = SA_CHAN_OK;
			return true;
		}
		if (chan_ring_get(c, cas->elem) == RING_OK) {
			cas->status = SA_CHAN_OK;
		} else if (c->closed) {
			chan_elemclear(c, cas->elem);
			cas->status = SA_CHAN_CLOSED;
		} else {
			return false;
		}
		selunlock(cases, lockorder, n);
		return true;
	}
	if (c->closed) {
		cas->status = EPIPE;
	} else if ((sg = waitq_dequeue(&c->recvq)) != NULL) {
		chan_send_to(c, sg, cas->elem);
		selunlock(cases, lockorder, n);
		chan_ready(sg);
		cas->status = SA_CHAN_OK;
		return true;
	} else if (chan_ring_put(c, cas->elem) == RING_OK) {
		cas->status = SA_CHAN_OK;
	} else {
		return false;
	}
	selunlock(cases, lockorder, n);
	return true;
}

int sa_select(sa_select_case_t *cases, size_t ncases, long long timeout_ns)
{
	if (ncases > 0 && cases == NULL)
		return -EINVAL;
	if (ncases > (size_t)INT_MAX / 2)
		return -EINVAL;
	for (size_t i = 0; i < ncases; i++) {
		const sa_select_case_t *cas = &cases[i];
		if (cas->dir != SA_SELECT_SEND && cas->dir != SA_SELECT_RECV)
			return -EINVAL;
		if (cas->chan != NULL && cas->dir == SA_SELECT_SEND && cas->elem == NULL &&
		    cas->chan->elemsize != 0)
			return -EINVAL;
	}

	for (size_t i = 0; i < ncases; i++)
		if (cases[i].chan != NULL && cases[i].chan->kind != CHAN_MALLOC) {
			chan_gc_thread(cases[i].chan);
			break;
		}

	chang *g = chan_getg();
	sudog *sgs = g->sg;
	uint32_t *order = g->order;
	void *block = NULL;
	if (ncases > CHAN_TLS_CASES) {
		block = sa_malloc(ncases * (sizeof(sudog) + 2 * sizeof(uint32_t)));
		if (block == NULL)
			return -ENOMEM;
		sgs = block;
		order = (uint32_t *)(sgs + ncases);
	}
	uint32_t *pollorder = order, *lockorder = order + ncases;

	/* Inside-out Fisher-Yates over the non-NULL cases: each new case lands at a uniformly
	 * random position, so every permutation is equally likely. */
	size_t norder = 0;
	for (size_t i = 0; i < ncases; i++) {
		if (cases[i].chan == NULL)
			continue;
		uint32_t j = chan_fastrandn(g, (uint32_t)norder + 1);
		pollorder[norder] = pollorder[j];
		pollorder[j] = (uint32_t)i;
		norder++;
	}
	memcpy(lockorder, pollorder, norder * sizeof(uint32_t));
	sort_lockorder(cases, lockorder, norder);

	int chosen = SA_SELECT_NONE;
	sellock(cases, lockorder, norder);

	/* pass 1: the first ready case in poll order. Before blocking, it runs a second time
	 * with the buffered channels' fast paths shut: a lock-free operation may have made a
	 * case ready since the first look, and none can from then on. */
	for (int round = 0;; round++) {
		for (size_t k = 0; k < norder; k++) {
			uint32_t i = pollorder[k];
			if (try_case(&cases[i], cases, lockorder, norder)) {
				chosen = (int)i;
				goto out;
			}
		}
		if (timeout_ns == 0) { /* the default clause */
			selunlock(cases, lockorder, norder);
			goto out;
		}
		if (round == 1 || !selsetwait(cases, lockorder, norder))
			break;
	}

	/* pass 2: wait on every channel at once */
	struct timespec ts;
	const struct timespec *deadline = chan_deadline(timeout_ns, &ts);
	chan_prepark(g);
	for (size_t k = 0; k < norder; k++) {
		uint32_t i = lockorder[k];
		sudog *sg = &sgs[k];
		hchan *c = cases[i].chan;
		sg->g = g;
		sg->elem = cases[i].elem;
		sg->caseidx = (int)i;
		sg->isrecv = cases[i].dir == SA_SELECT_RECV;
		sg->success = false;
		waitq_enqueue(sg->isrecv ? &c->recvq : &c->sendq, sg);
	}
	selunlock(cases, lockorder, norder);

	sudog *winner = chan_park(g, deadline) ? g->param : NULL;
	/* GC channels must stay reachable while we wait: the cases array (the caller's) holds
	 * them; keep the pointer to it live across the park. */
	__asm__ __volatile__("" : : "r"(cases) : "memory");

	/* pass 3: withdraw the losing sudogs. The winner was dequeued by its partner. */
	sellock(cases, lockorder, norder);
	for (size_t k = 0; k < norder; k++) {
		sudog *sg = &sgs[k];
		if (sg != winner) {
			hchan *c = cases[sg->caseidx].chan;
			waitq_remove(sg->isrecv ? &c->recvq : &c->sendq, sg);
		}
	}
	selunlock(cases, lockorder, norder);

	if (winner != NULL) {
		chosen = winner->caseidx;
		if (winner->isrecv)
			cases[chosen].status = winner->success ? SA_CHAN_OK : SA_CHAN_CLOSED;
		else
			cases[chosen].status = winner->success ? SA_CHAN_OK : EPIPE;
	}
out:
	if (block != NULL)
		sa_free(block);
	return chosen;
}
