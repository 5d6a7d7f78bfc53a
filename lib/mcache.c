/* mcache.c — the per-thread cache of free objects (the fallback shape of DESIGN.md's mcache).
 *
 * Each thread owns one mcache in initial-exec TLS: per size class a singly linked list of free
 * objects threaded through their first word, with a count and a bound. malloc pops, free
 * pushes; neither takes a lock nor makes a system call. An empty list refills with a batch
 * from mcentral; a list past its bound flushes a batch back. Batches are sized so one lock
 * acquisition covers up to 64 objects, and a class holds at most SPANALLOC_MCACHE_CLASS_BYTES.
 *
 * Life cycle: a thread's mcache starts NEW (bounds 0, so its first free or malloc takes the
 * slow path, which registers a pthread key destructor and sets the bounds) and becomes LIVE.
 * At thread exit the destructor flushes every list and marks it DEAD: bounds stay 0, so any
 * later malloc or free in that thread's remaining destructors goes straight to mcentral and
 * nothing is stranded. SPANALLOC_DEBUG keeps every thread at bound 0: no caching at all, so
 * each free reaches its span and a double free is caught on the spot.
 *
 * Issue 4 replaces the inside of this file with per-CPU caches reached through rseq; the
 * interface (mcache_refill, mcache_overflow, mcache_release) stays.
 */
#include "internal.h"

#include <string.h>

__thread mcache_t sa_mcache __attribute__((tls_model("initial-exec")));

static pthread_key_t mcache_key;
static uint8_t class_batch[SA_NUM_SIZE_CLASSES];
static uint32_t class_max[SA_NUM_SIZE_CLASSES];

#define BATCH_MAX 64

static void mcache_thread_exit(void *arg);

void mcache_init(void)
{
	pthread_key_create(&mcache_key, mcache_thread_exit);
	for (unsigned i = 1; i < SA_NUM_SIZE_CLASSES; i++) {
		size_t size = sa_class_to_size[i];
		size_t per_class = sa_config.mcache_class_bytes;
		size_t b = per_class / 2 / size;
		class_batch[i] = (uint8_t)(b < 1 ? 1 : b > BATCH_MAX ? BATCH_MAX : b);
		class_max[i] = sa_config.debug || per_class == 0 ? 0 : (uint32_t)(2 * class_batch[i]);
	}
}

/* Every LIVE mcache is on this list, so statistics can count what caches hold. */
static pthread_mutex_t mcaches_lock = PTHREAD_MUTEX_INITIALIZER;
static mcache_t *mcaches;

static void mcache_register(mcache_t *c)
{
	c->state = MCACHE_LIVE;
	pthread_setspecific(mcache_key, c);
	pthread_mutex_lock(&mcaches_lock);
	c->next = mcaches;
	c->prev = NULL;
	if (mcaches)
		mcaches->prev = c;
	mcaches = c;
	pthread_mutex_unlock(&mcaches_lock);
	for (unsigned i = 1; i < SA_NUM_SIZE_CLASSES; i++)
		c->lists[i].max = class_max[i];
}

/* Flush up to n objects from the head of list cls. */
static void flush_list(mcache_t *c, unsigned cls, size_t n)
{
	freelist_t *l = &c->lists[cls];
	void *buf[BATCH_MAX];
	while (n > 0 && l->head) {
		size_t k = 0;
		while (k < BATCH_MAX && k < n && l->head) {
			buf[k++] = l->head;
			l->head = *(void **)l->head;
		}
		l->count -= (uint32_t)k;
		n -= k;
		mcentral_flush(make_spanclass(cls, true), buf, k);
	}
}

/* Slow path of malloc: list cls is empty. Returns one object, or NULL when out of memory. */
void *mcache_refill(unsigned cls)
{
	sa_ensure_init();
	mcache_t *c = &sa_mcache;
	if (c->state == MCACHE_NEW)
		mcache_register(c);
	freelist_t *l = &c->lists[cls];
	if (l->head) /* filled meanwhile (a NEW cache registering) */
		goto pop;
	void *buf[BATCH_MAX];
	size_t want = l->max ? class_batch[cls] : 1;
	size_t got = mcentral_refill(make_spanclass(cls, true), buf, want);
	if (got == 0)
		return NULL;
	for (size_t i = got - 1; i >= 1; i--) {
		*(void **)buf[i] = l->head;
		l->head = buf[i];
	}
	l->count += (uint32_t)(got - 1);
	return buf[0];
pop:;
	void *p = l->head;
	l->head = *(void **)p;
	l->count--;
	return p;
}

/* Slow path of free: list cls went past its bound (or the cache is not LIVE). The object was
 * pushed already. */
void mcache_overflow(unsigned cls)
{
	mcache_t *c = &sa_mcache;
	if (c->state == MCACHE_NEW) {
		sa_ensure_init();
		mcache_register(c);
		if (c->lists[cls].count <= c->lists[cls].max)
			return;
	}
	freelist_t *l = &c->lists[cls];
	if (unlikely(sa_config.debug)) /* poison all but the link word: use-after-free shows */
		memset((char *)l->head + sizeof(void *), 0xde, sa_class_to_size[cls] - sizeof(void *));
	/* keep half the bound so a free/malloc ping-pong at the edge does not flush every time */
	flush_list(c, cls, l->max ? l->count - l->max / 2 : l->count);
}

/* Return everything the cache holds to mcentral. */
void mcache_release(mcache_t *c)
{
	for (unsigned i = 1; i < SA_NUM_SIZE_CLASSES; i++)
		if (c->lists[i].count)
			flush_list(c, i, c->lists[i].count);
}

static void mcache_unlink(mcache_t *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		mcaches = c->next;
	if (c->next)
		c->next->prev = c->prev;
}

static void mcache_thread_exit(void *arg)
{
	mcache_t *c = arg;
	mcache_release(c);
	pthread_mutex_lock(&mcaches_lock);
	mcache_unlink(c);
	pthread_mutex_unlock(&mcaches_lock);
	c->state = MCACHE_DEAD;
	for (unsigned i = 1; i < SA_NUM_SIZE_CLASSES; i++)
		c->lists[i].max = 0;
}

/* Objects of class cls held by all caches (a racy but consistent-enough sum for reports). */
size_t mcache_cached(unsigned cls)
{
	size_t n = 0;
	pthread_mutex_lock(&mcaches_lock);
	for (mcache_t *c = mcaches; c; c = c->next)
		n += __atomic_load_n(&c->lists[cls].count, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&mcaches_lock);
	return n;
}

/* fork: hold the list still in the parent; in the child only the forking thread survives. */
void mcache_fork_prepare(void) { pthread_mutex_lock(&mcaches_lock); }
void mcache_fork_parent(void) { pthread_mutex_unlock(&mcaches_lock); }
void mcache_fork_child(void)
{
	pthread_mutex_init(&mcaches_lock, NULL);
	mcache_t *self = &sa_mcache;
	mcaches = NULL;
	if (self->state == MCACHE_LIVE) {
		self->next = self->prev = NULL;
		mcaches = self;
	}
}
