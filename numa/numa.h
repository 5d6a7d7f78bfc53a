/* numa.h — NUMA topology and binding for spanalloc (see numa.c). lib/ asks this module and
 * never calls libnuma directly. */
#ifndef SA_NUMA_H
#define SA_NUMA_H

#include <stdbool.h>
#include <stddef.h>

#define SA_NUMA_MAX_CPUS 1024
#define SA_NUMA_MAX_NODES 64

/* Read the topology once; never allocates. fake_nodes > 1 simulates that many nodes.
 * Returns the number of nodes (≥ 1). */
int sa_numa_init(int fake_nodes);
bool sa_numa_available(void);
/* Nodes as spanalloc sees them: the simulated count under SPANALLOC_NUMA_FAKE, else the real. */
int sa_numa_nodes(void);
/* Nodes of the machine (binding applies only to these). */
int sa_numa_real_nodes(void);
/* Node of a CPU (0 for unknown CPUs or without NUMA). */
int sa_numa_node_of_cpu(int cpu);
/* Node of the CPU the caller runs on now. */
int sa_numa_current_node(void);
/* Bind [addr, addr+len) to node (MPOL_BIND) or interleave it over all nodes (node < 0).
 * A no-op returning true where NUMA is unavailable. */
bool sa_numa_bind(void *addr, size_t len, int node);
/* Around a MAP_HUGETLB mmap for a memory of node `node`: make the calling thread's policy
 * MPOL_BIND to that node (the kernel checks the hugetlb reservation against the free huge pages
 * of the task's bound nodes, so a node without free pages fails the mmap, and the caller falls
 * back, instead of a SIGBUS at fault time), then put the old policy back. A no-op returning
 * false for a simulated node, on one node, or without NUMA; the token passes the old policy. */
typedef struct sa_numa_saved {
	int active, mode;
	unsigned long mask[4];
} sa_numa_saved_t;
void sa_numa_policy_push(int node, sa_numa_saved_t *saved);
void sa_numa_policy_pop(sa_numa_saved_t *saved);

#endif
