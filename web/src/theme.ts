import { createSystem, defaultConfig, defineConfig } from '@chakra-ui/react';

// Chakra's teal.600 under white button text is 3.7:1, below WCAG AA (4.5:1); teal.700 passes.
const config = defineConfig({
  theme: {
    semanticTokens: {
      colors: {
        teal: {
          solid: { value: { _light: '{colors.teal.700}', _dark: '{colors.teal.700}' } },
        },
      },
    },
  },
});

export const system = createSystem(defaultConfig, config);
