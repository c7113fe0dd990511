import { Box, Button, Flex, IconButton, Link, Menu, Portal, Text } from '@chakra-ui/react';
import { NavLink, Outlet } from 'react-router';
import { useAuth, useSession } from '../auth/AuthContext';
import { roleAtLeast } from '../api/types';
import { useColorMode } from '../lib/colorMode';

const NAV = [
  { to: '/', label: 'Overview', end: true },
  { to: '/devices', label: 'Devices' },
  { to: '/alerts', label: 'Alerts' },
  { to: '/rules', label: 'Rules' },
] as const;

export function ColorModeToggle() {
  const { mode, toggle } = useColorMode();
  const next = mode === 'dark' ? 'light' : 'dark';
  return (
    <IconButton
      aria-label={`Switch to ${next} theme`}
      title={`Switch to ${next} theme`}
      variant="ghost"
      size="sm"
      onClick={toggle}
    >
      <span aria-hidden="true">{mode === 'dark' ? '☀' : '☾'}</span>
    </IconButton>
  );
}

function NavItem({ to, label, end }: { to: string; label: string; end?: boolean }) {
  return (
    <Link asChild px={3} py={2} borderRadius="md" whiteSpace="nowrap" fontWeight="medium">
      <NavLink
        to={to}
        end={end}
        style={({ isActive }) => (isActive ? { textDecoration: 'underline' } : undefined)}
      >
        {label}
      </NavLink>
    </Link>
  );
}

export function Layout() {
  const session = useSession();
  const { signOut } = useAuth();
  const items: { to: string; label: string; end?: boolean }[] = [...NAV];
  if (roleAtLeast(session.role, 'owner')) items.push({ to: '/admin', label: 'Administration' });
  return (
    <Box minH="100vh" bg="bg" color="fg">
      <a href="#main" className="skip-link">
        Skip to content
      </a>
      <Box as="header" borderBottomWidth="1px" bg="bg.panel" position="sticky" top={0} zIndex={10}>
        <Flex align="center" gap={2} px={{ base: 2, md: 4 }} py={2} wrap="wrap">
          <Text fontWeight="bold" fontSize="lg" mr={2} color="teal.fg">
            Telemetra
          </Text>
          <Box
            as="nav"
            aria-label="Main"
            display="flex"
            flex="1"
            overflowX="auto"
            order={{ base: 3, md: 0 }}
            flexBasis={{ base: '100%', md: 'auto' }}
          >
            {items.map((item) => (
              <NavItem key={item.to} {...item} />
            ))}
          </Box>
          <Box ml="auto" display="flex" alignItems="center" gap={1}>
            <ColorModeToggle />
            <Menu.Root>
              <Menu.Trigger asChild>
                <Button
                  variant="outline"
                  size="sm"
                  aria-label={`User menu for ${session.username}`}
                >
                  <Text as="span" maxW="12rem" truncate>
                    {session.username}
                  </Text>
                </Button>
              </Menu.Trigger>
              <Portal>
                <Menu.Positioner>
                  <Menu.Content>
                    <Menu.ItemGroup>
                      <Menu.ItemGroupLabel>
                        {session.role}
                        {session.tenant ? ` · ${session.tenant}` : ''}
                      </Menu.ItemGroupLabel>
                    </Menu.ItemGroup>
                    <Menu.Separator />
                    <Menu.Item value="signout" onClick={() => void signOut()}>
                      Sign out
                    </Menu.Item>
                  </Menu.Content>
                </Menu.Positioner>
              </Portal>
            </Menu.Root>
          </Box>
        </Flex>
      </Box>
      <Box as="main" id="main" tabIndex={-1} px={{ base: 3, md: 6 }} py={4} maxW="1400px" mx="auto">
        <Outlet />
      </Box>
    </Box>
  );
}
