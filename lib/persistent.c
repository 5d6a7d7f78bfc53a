/* persistent.c — memory for spanalloc's own metadata (Go's persistentalloc / sysAlloc).
 *
 * Arena metadata, span records, the arena index and per-thread state never live in the heap
 * they describe: that would make the heap recursive. They come from anonymous mappings here,
 * carved by a bump pointer out of 256 KiB blocks, and are never freed (span records are
 * recycled by mheap's pool instead). Fresh mappings are zero, so callers get zeroed memory.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#define PERSISTENT_BLOCK ((size_t)256 << 10)

static pthread_mutex_t persistent_lock = PTHREAD_MUTEX_INITIALIZER;
static char *persistent_next, *persistent_end;

void *os_map(size_t n)
{
	void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

void *persistent_alloc(size_t n)
{
	n = (n + SA_CACHE_LINE - 1) & ~(size_t)(SA_CACHE_LINE - 1);
	if (n >= PERSISTENT_BLOCK / 4)
		return os_map(n);
	pthread_mutex_lock(&persistent_lock);
	if ((size_t)(persistent_end - persistent_next) < n) {
		char *b = os_map(PERSISTENT_BLOCK);
		if (b == NULL) {
			pthread_mutex_unlock(&persistent_lock);
			return NULL;
		}
		persistent_next = b;
		persistent_end = b + PERSISTENT_BLOCK;
	}
	void *p = persistent_next;
	persistent_next += n;
	pthread_mutex_unlock(&persistent_lock);
	return p;
}

/* Read a small (sysfs/procfs) file into buf, NUL-terminated, without allocating: these reads
 * happen inside malloc's initialisation. Returns the length, or -1. */
ssize_t os_read_file(const char *path, char *buf, size_t n)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t r = read(fd, buf, n - 1);
	close(fd);
	buf[r > 0 ? r : 0] = '\0';
	return r;
}
