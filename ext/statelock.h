/* statelock.h -- the hashed lock on the page index: the 2006 follow-up to the guest page hinting
 * series ("get rid of the PG_state_change page flag bit, use a hashed lock on the page index
 * instead"), beside the hold bits of the state byte (gphint.h GPH_FLAG_*).
 *
 * A page's lock is one of GPH_STATELOCK_BUCKETS locks, chosen by a hash of the address of its
 * state byte -- unique per (region, page), as every region owns its own table.  In a table
 * registered here ("hashed"), the host holds the lock instead of BUSY and the fault thread holds
 * it instead of SERVING for the faulting page; the guest takes it around each transition.  Holds
 * that span several pages (fault-around neighbours, page-cache fills, slot reclaim) or a store
 * that can fault (resolving a lazily freed page) keep their bit, set and checked under the lock.
 *
 * The locks are re-entrant per thread (a host batch may hold two pages of one bucket), and only
 * threads that hold nothing else wait for one (the guest's transition, the fault thread's own
 * page, the lazy resolver); multi-page holders only try, and skip a page whose lock is taken --
 * as they skip a held page in the hold-bit protocol.  So no wait can close a cycle. */
#ifndef GPHINT_STATELOCK_H
#define GPHINT_STATELOCK_H

#include <stdint.h>

#define GPH_STATELOCK_BUCKETS 4096   /* 64 KiB: a 2 MiB fault-around run rarely meets itself */

int gph_statelock_try(const uint8_t *b);     /* 1: taken (or already this thread's) */
void gph_statelock_lock(const uint8_t *b);   /* spin, then sched_yield, until taken */
void gph_statelock_unlock(const uint8_t *b);
int gph_statelock_taken(const uint8_t *b);   /* tests: is the page's lock held by anyone */
/* Tests: hold b's lock for ns, reading the byte just after taking it and just before release. */
void gph_statelock_hold_test(const uint8_t *b, uint64_t ns, uint8_t *first, uint8_t *last);
/* Tables in hashed mode (registered by the fault service for its regions).  A lookup is one
 * probe sequence without a lock; changes are rare (register / unregister). */
long gph_statelock_register(const uint8_t *states);
void gph_statelock_unregister(const uint8_t *states);
int gph_statelock_hashed(const uint8_t *states);

#endif
