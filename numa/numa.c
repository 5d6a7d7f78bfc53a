/* numa.c — CPU → node topology and memory binding.
 *
 * The topology is read from sysfs (/sys/devices/system/node/nodeN/cpulist) with open/read into
 * static tables, because this runs inside malloc's initialisation: libnuma's own topology
 * calls allocate with malloc, which would recurse into spanalloc before it is ready. From
 * libnuma we use what is allocation-free: numa_available() and mbind(). On a machine without
 * NUMA (numa_available() < 0) every CPU is on node 0 and binding does nothing.
 *
 * SPANALLOC_NUMA_FAKE=N (lib/env.c passes it in; for tests) splits the CPUs into N simulated nodes
 * (CPU c on node c % N); binding then applies only to nodes that exist: node n < the real node
 * count is bound to real node n, a higher one is left unbound, and interleaving spans the real
 * nodes only.
 *
 * sa_numa_current_node() is sched_getcpu() (glibc reads it from the rseq area, no system call)
 * and a table lookup: cheap enough for the refill slow path, not meant for the fast path.
 */
#include "numa.h"

#include <fcntl.h>
#include <numa.h>
#include <numaif.h>
#include <sched.h>
#include <unistd.h>

static int nnodes = 1;
static int real_nodes = 1;
static bool available;
static short cpu_node[SA_NUMA_MAX_CPUS];

/* Parse a cpulist such as "0-3,8,10-11" and assign its CPUs to node. */
static void parse_cpulist(const char *s, int node)
{
	while (*s && *s != '\n') {
		int a = 0, b;
		while (*s >= '0' && *s <= '9')
			a = a * 10 + (*s++ - '0');
		b = a;
		if (*s == '-') {
			s++;
			b = 0;
			while (*s >= '0' && *s <= '9')
				b = b * 10 + (*s++ - '0');
		}
		for (int c = a; c <= b && c < SA_NUMA_MAX_CPUS; c++)
			cpu_node[c] = (short)node;
		if (*s == ',')
			s++;
		else if (*s && *s != '\n')
			break;
	}
}

int sa_numa_init(int fake_nodes)
{
	available = numa_available() >= 0;
	if (available) {
		char path[64], buf[512];
		int found = 0;
		for (int n = 0; n < SA_NUMA_MAX_NODES; n++) {
			/* snprintf does not allocate for %d; keep it simple and bounded */
			int len = 0;
			const char *pre = "/sys/devices/system/node/node";
			while (pre[len]) {
				path[len] = pre[len];
				len++;
			}
			if (n >= 10)
				path[len++] = (char)('0' + n / 10);
			path[len++] = (char)('0' + n % 10);
			const char *suf = "/cpulist";
			for (int i = 0; suf[i]; i++)
				path[len++] = suf[i];
			path[len] = '\0';
			int fd = open(path, O_RDONLY | O_CLOEXEC);
			if (fd < 0)
				continue;
			ssize_t r = read(fd, buf, sizeof buf - 1);
			close(fd);
			if (r <= 0)
				continue;
			buf[r] = '\0';
			parse_cpulist(buf, n);
			if (n + 1 > found)
				found = n + 1;
		}
		real_nodes = nnodes = found > 0 ? found : 1;
	}
	if (fake_nodes > 1 && fake_nodes <= SA_NUMA_MAX_NODES) {
		nnodes = fake_nodes;
		long ncpu = sysconf(_SC_NPROCESSORS_CONF);
		for (long c = 0; c < ncpu && c < SA_NUMA_MAX_CPUS; c++)
			cpu_node[c] = (short)(c % nnodes);
	}
	return nnodes;
}

bool sa_numa_available(void) { return available; }
int sa_numa_nodes(void) { return nnodes; }
int sa_numa_real_nodes(void) { return real_nodes; }

int sa_numa_node_of_cpu(int cpu)
{
	if (cpu < 0 || cpu >= SA_NUMA_MAX_CPUS)
		return 0;
	return cpu_node[cpu];
}

int sa_numa_current_node(void)
{
	return sa_numa_node_of_cpu(sched_getcpu());
}

bool sa_numa_bind(void *addr, size_t len, int node)
{
	if (!available)
		return true;
	unsigned long mask = 0;
	int mode;
	if (node < 0) {
		mode = MPOL_INTERLEAVE;
		for (int n = 0; n < real_nodes && n < 64; n++)
			mask |= 1UL << n;
	} else {
		if (node >= real_nodes) /* a simulated node: no memory of its own */
			return true;
		mode = MPOL_BIND;
		mask = 1UL << node;
	}
	return mbind(addr, len, mode, &mask, sizeof mask * 8, 0) == 0;
}

void sa_numa_policy_push(int node, sa_numa_saved_t *sv)
{
	sv->active = 0;
	if (!available || real_nodes <= 1 || node < 0 || node >= real_nodes || node >= 64)
		return;
	if (get_mempolicy(&sv->mode, sv->mask, sizeof sv->mask * 8, NULL, 0) != 0)
		return;
	unsigned long mask = 1UL << node;
	if (set_mempolicy(MPOL_BIND, &mask, sizeof mask * 8) == 0)
		sv->active = 1;
}

void sa_numa_policy_pop(sa_numa_saved_t *sv)
{
	if (!sv->active)
		return;
	set_mempolicy(sv->mode, sv->mode == MPOL_DEFAULT ? NULL : sv->mask,
		      sv->mode == MPOL_DEFAULT ? 0 : sizeof sv->mask * 8);
	sv->active = 0;
}
