// Types of the API's answers: from the generated OpenAPI schema where the API has them, and
// written here for endpoints being added alongside the dashboard.
import type { Schemas } from './client';

export type Role = 'viewer' | 'operator' | 'owner' | 'admin';
export const ROLES: Role[] = ['viewer', 'operator', 'owner', 'admin'];

export function roleAtLeast(role: string | undefined | null, least: Role): boolean {
  const have = ROLES.indexOf((role ?? '') as Role);
  return have >= 0 && have >= ROLES.indexOf(least);
}

export interface Session {
  username: string;
  role: Role;
  tenant_id: number;
  tenant?: string | null;
  csrf_token?: string | null;
  expires_at?: string | null;
}

export type Device = Schemas['DeviceOut'];
export type DevicePage = Schemas['DevicePage'];
export type Latest = Schemas['LatestOut'];
export type LatestList = Schemas['LatestList'];
export type SparklineList = Schemas['SparklineList'];
export type Me = Schemas['MeOut'];
export type Aggregate = Schemas['AggregateOut'];
export type Quality = Schemas['QualityOut'];
export type Clock = Schemas['ClockOut'];
export type DeadLetter = Schemas['DeadLetterOut'];
export type DeadLetterPage = Schemas['DeadLetterPage'];
export type Alert = Schemas['AlertOut'];
export type AlertPage = Schemas['AlertPage'];
export type Rule = Schemas['RuleOut'];
export type RuleList = Schemas['RuleList'];
export type PreviewOut = Schemas['PreviewOut'];
export type TokenOut = Schemas['TokenOut'];
export type CertificateOut = Schemas['CertificateOut'];
export type User = Schemas['UserOut'];
export type UserPage = Schemas['UserPage'];
export type Tenant = Schemas['TenantOut'];
export type TenantPage = Schemas['TenantPage'];

export type Overview = Schemas['OverviewOut'];
export type CleaningRule = Schemas['CleaningRuleOut'];
export type CleaningRuleIn = Schemas['CleaningRuleIn'];
export type CleaningRuleList = Schemas['CleaningRuleList'];
