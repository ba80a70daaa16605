import { defineConfig } from 'vitest/config';

// npm run test:image (scripts/test-image.sh builds the image first): not part of npm test.
export default defineConfig({
  test: {
    include: ['test/image/**/*.test.ts'],
    testTimeout: 180_000,
    hookTimeout: 180_000,
    fileParallelism: false,
  },
});
