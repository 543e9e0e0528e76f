/* cpu_relax.h -- the pause inside a short spin-wait, on every architecture gphint builds for.
 *
 * A spinning thread should tell the CPU it is waiting: on x86 `pause` stops the spin from
 * flooding the pipeline with speculative loads and yields to the sibling hyperthread; on arm64
 * `yield` is the hint the kernel's own cpu_relax() uses (arch/arm64/include/asm/vdso/processor.h).
 * Elsewhere a compiler barrier keeps the loop re-reading memory, which is all correctness needs. */
#ifndef GPHINT_CPU_RELAX_H
#define GPHINT_CPU_RELAX_H

static inline void gph_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__) || (defined(__arm__) && defined(__ARM_ARCH) && __ARM_ARCH >= 7)
    __asm__ __volatile__("yield" ::: "memory");
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}

#endif /* GPHINT_CPU_RELAX_H */
