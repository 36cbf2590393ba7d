// The shapes of warden-server's answers that the console reads (see docs/SERVER.md and
// crates/warden-server/src/http/*.rs). Only the fields the console uses are named.

export type Role = "viewer" | "operator" | "admin";

export interface Session {
  name: string;
  role: Role;
  expires_ms: number | null;
  csrf: string | null;
}

export interface Site {
  id: number;
  site_code: string;
  display_name: string;
  company: string;
  key_version: number;
}

export interface KeyInfo {
  version: number;
  fingerprint: string;
  fingerprint_label: string;
  created_ms: number;
}

export interface IssuedKey {
  key: string;
  version: number;
  fingerprint_label: string;
}

export type Labels = Record<string, string | string[] | null | undefined>;

export interface Machine {
  machine_id: string;
  site_code: string;
  hostname: string;
  labels: Labels | null;
  state: string;
  banned: boolean;
  key_version: number;
  created_ms: number;
  last_seen_ms: number;
  connected: boolean;
  linked_ms: number | null;
  machine_key_version: number | null;
  agent_version: string | null;
}

export interface MachineKey {
  id: number;
  version: number;
  created_ms: number;
  revoked: boolean;
  pending: boolean;
  retired: boolean;
}

/** A parameter as wardend describes it (`ParamKind` flattened with `secret`). */
export type Param =
  | { type: "string"; max_len?: number; pattern?: string; secret?: boolean }
  | { type: "enum"; values: string[]; secret?: boolean }
  | { type: "int"; min?: number; max?: number; secret?: boolean }
  | { type: "bool"; secret?: boolean }
  | { type: "path"; under?: string[]; must_exist?: boolean; secret?: boolean };

export interface RemoteAction {
  name: string;
  description: string;
  tier: string;
  params: Record<string, Param>;
}

export interface MachineActions {
  machine_id: string;
  actions: RemoteAction[] | null;
  reported_ms: number | null;
}

export interface Dispatch {
  dispatch_id: string;
  operator: string;
  action: string;
  params: Record<string, unknown>;
  target: unknown;
  excluded: { machine_id: string; reason: string }[] | null;
  batch: number;
  max_failures: number | null;
  canary: number;
  state: string;
  cancel_requested: boolean;
  stopped: string | null;
  created_ms: number;
  ended_ms: number | null;
}

export interface HostPart {
  machine_id: string;
  hostname: string;
  state: string;
  job_id: string | null;
  exit_code: number | null;
  /** What the job reported as its result, once it ended. */
  result?: unknown;
  refusal_kind: string | null;
  refusal_message: string | null;
  note: string | null;
  progress: { state?: string; percent?: number; phase?: string } | null;
  last_seq: number;
  output_truncated: boolean;
}

export type Summary = Record<string, number>;

export interface DispatchView {
  dispatch: Dispatch;
  hosts: HostPart[];
  summary: Summary;
}

export interface Chunk {
  machine_id: string;
  hostname: string;
  seq: number;
  offset: number;
  data: string;
}

export interface AuditEvent {
  id: number;
  ts_ms: number;
  kind: string;
  actor: string;
  target: string;
  source: string;
  detail: string;
}
