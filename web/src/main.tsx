import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import App from './App';
import { applyColorMode } from './lib/colorMode';
import './index.css';

applyColorMode();

const root = document.getElementById('root');
if (!root) throw new Error('no #root element');
createRoot(root).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
