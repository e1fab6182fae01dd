/**
 * Unit tests of the sidebar's model and formatting (src/__tests__/*.spec.ts), in node:
 * ts-jest compiles them as CommonJS; the server is faked at the network seam (requestAPI).
 */
module.exports = {
  testEnvironment: 'node',
  testRegex: 'src/.*/.*.spec.ts[x]?$',
  transform: {
    '^.+\\.tsx?$': ['ts-jest', { tsconfig: 'tsconfig.test.json' }]
  },
  collectCoverageFrom: ['src/**/*.{ts,tsx}', '!src/**/*.d.ts']
};
