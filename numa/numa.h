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

#endif
