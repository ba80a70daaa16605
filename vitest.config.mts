import { defineConfig } from 'vitest/config';

// Two projects: fast unit tests of pure TypeScript, and e2e tests that load the
// real BPF programs and run real containers (root, longer timeouts, one file at
// a time since they share the kernel's tracepoints and podman's storage).
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
          testTimeout: 30_000,
        },
      },
      {
        test: {
          name: 'e2e',
          include: ['test/e2e/**/*.test.ts'],
          testTimeout: 120_000,
          hookTimeout: 180_000,
          fileParallelism: false,
        },
      },
    ],
  },
});
