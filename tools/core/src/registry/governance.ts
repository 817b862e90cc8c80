/**
 * Governance of a registry: who may approve (ed25519 public keys listed in
 * `config.json`), which refs need how many approvals, and how risky an
 * adapter is. The registry (registry.ts) enforces it under its writer lock;
 * this module holds the pure parts: keys, signatures, risk rules, config.
 *
 * An approval signs the canonical JSON of
 *     {purpose: "catechism-approval/1", ref, bundle, report, key_id, when, note}
 * so it is bound to one ref (a tenant's approval cannot be replayed on
 * another ref), one bundle's content hash and one report's hash (a new
 * report needs new approvals). `key_id` is the sha256 of the public key's
 * DER (SPKI) bytes.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { canonicalJson, sha256Hex } from '../adapters/fsio.js';
import type { BundleManifest } from '../adapters/manifest.js';
import type { ApprovalRecord } from '../records/schema.js';

export const APPROVAL_PURPOSE = 'catechism-approval/1';

export interface Approver {
  name: string;
  /** Null: approves refs without a namespace (`live`); else only refs `<namespace>/…`. */
  namespace: string | null;
  /** PEM (SPKI) of the ed25519 public key. */
  public_key: string;
  key_id: string;
  added_at?: string;
  added_by?: string;
}

export interface RiskRules {
  /** Relations whose subject is a person (facts about people are high risk). */
  person_relations: string[];
}

export interface CanaryThresholds {
  /** Largest share of traffic prompts whose greedy answer may change. */
  disagreement: number;
  /** Largest mean KL(live ‖ candidate) of the next-token distributions. */
  kl: number;
  /** Largest share of prompts where the candidate leaks an edited fact's target. */
  leak: number;
}

export interface RegistryConfig {
  approvers: Approver[];
  /** Ref name → approvals required for a promotion to it. */
  protected: Record<string, number>;
  risk: RiskRules;
  canary: CanaryThresholds;
}

/**
 * Relations about people (Wikidata property ids as CounterFact and zsRE use
 * them, and the fixture world's names): place of birth/death, citizenship,
 * employer, languages spoken, occupation, position held, education, religion,
 * residence, sport, instrument, team, spouse.
 */
export const DEFAULT_PERSON_RELATIONS: readonly string[] = [
  'P19', 'P20', 'P27', 'P108', 'P1412', 'P106', 'P39', 'P69', 'P140', 'P551', 'P641', 'P1303', 'P54', 'P26', 'P413', 'P102',
  'born_in', 'died_in', 'citizen_of', 'works_for', 'speaks', 'occupation', 'lives_in', 'religion', 'plays_sport', 'plays_instrument', 'spouse', 'educated_at',
];

export const DEFAULT_CANARY: CanaryThresholds = { disagreement: 0.2, kl: 0.5, leak: 0 };

export function defaultConfig(): RegistryConfig {
  return { approvers: [], protected: {}, risk: { person_relations: [...DEFAULT_PERSON_RELATIONS] }, canary: { ...DEFAULT_CANARY } };
}

/** A config read from JSON, missing parts filled with the defaults; throws naming the field. */
export function normaliseConfig(v: unknown, where: string): RegistryConfig {
  const d = defaultConfig();
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error(`${where}: not a JSON object`);
  const o = v as Record<string, unknown>;
  const approvers = o.approvers ?? [];
  if (!Array.isArray(approvers)) throw new Error(`${where}: approvers: expected a list`);
  approvers.forEach((a, i) => {
    const x = a as Partial<Approver>;
    if (typeof x?.name !== 'string' || typeof x.public_key !== 'string' || typeof x.key_id !== 'string') throw new Error(`${where}: approvers[${i}]: expected {name, namespace, public_key, key_id}`);
    if (x.namespace !== null && x.namespace !== undefined && typeof x.namespace !== 'string') throw new Error(`${where}: approvers[${i}].namespace: expected a string or null`);
  });
  const prot = o.protected ?? {};
  if (prot === null || typeof prot !== 'object' || Array.isArray(prot)) throw new Error(`${where}: protected: expected {ref: approvals}`);
  for (const [r, n] of Object.entries(prot)) if (!Number.isInteger(n) || (n as number) < 0) throw new Error(`${where}: protected.${r}: expected a whole number ≥ 0`);
  const risk = { ...d.risk, ...((o.risk as object) ?? {}) } as RiskRules;
  if (!Array.isArray(risk.person_relations)) throw new Error(`${where}: risk.person_relations: expected a list of relation names`);
  const canary = { ...d.canary, ...((o.canary as object) ?? {}) } as CanaryThresholds;
  for (const k of ['disagreement', 'kl', 'leak'] as const) if (typeof canary[k] !== 'number') throw new Error(`${where}: canary.${k}: expected a number`);
  return { approvers: (approvers as Approver[]).map((a) => ({ ...a, namespace: a.namespace ?? null })), protected: prot as Record<string, number>, risk, canary };
}

/** `acme/live` → `acme`; `live` → null. */
export function refNamespace(ref: string): string | null {
  const i = ref.indexOf('/');
  return i < 0 ? null : ref.slice(0, i);
}

// ---------------------------------------------------------------- keys

export function publicKeyId(pub: KeyObject): string {
  return sha256Hex(pub.export({ type: 'spki', format: 'der' }));
}

export function publicKeyPem(pub: KeyObject): string {
  return String(pub.export({ type: 'spki', format: 'pem' }));
}

/** A fresh ed25519 key pair as PEM texts (PKCS#8 private, SPKI public). */
export function generateApproverKeys(): { privatePem: string; publicPem: string; keyId: string } {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return { privatePem: String(privateKey.export({ type: 'pkcs8', format: 'pem' })), publicPem: publicKeyPem(publicKey), keyId: publicKeyId(publicKey) };
}

/** A private key from PEM text; throws unless it is ed25519. */
export function readPrivateKey(pem: string): KeyObject {
  const k = createPrivateKey(pem);
  if (k.asymmetricKeyType !== 'ed25519') throw new Error(`expected an ed25519 private key, got ${k.asymmetricKeyType ?? 'an unknown type'}`);
  return k;
}

/** A public key from PEM text (a private key's PEM gives its public half); throws unless ed25519. */
export function readPublicKey(pem: string): KeyObject {
  const k = createPublicKey(pem);
  if (k.asymmetricKeyType !== 'ed25519') throw new Error(`expected an ed25519 public key, got ${k.asymmetricKeyType ?? 'an unknown type'}`);
  return k;
}

// ---------------------------------------------------------------- approvals

/** One signed approval, as stored in `approvals/<ref>.ndjson` (the record kind; stored lines always carry their chain). */
export type Approval = ApprovalRecord & { chain: string };

export type ApprovalContent = Pick<Approval, 'ref' | 'bundle' | 'report' | 'key_id' | 'when' | 'note'>;

export function signedPayload(a: ApprovalContent): Buffer {
  return Buffer.from(canonicalJson({ purpose: APPROVAL_PURPOSE, ref: a.ref, bundle: a.bundle, report: a.report, key_id: a.key_id, when: a.when, note: a.note }), 'utf8');
}

export function signApproval(a: ApprovalContent, key: KeyObject): string {
  return sign(null, signedPayload(a), key).toString('base64');
}

/** Why an approval's signature does not hold (null: it does): the key it carries must be the one it names and must have signed exactly these fields. */
export function signatureProblem(a: Approval): string | null {
  let pub: KeyObject;
  try {
    pub = readPublicKey(a.public_key);
  } catch (e) {
    return `its public key does not read (${(e as Error).message})`;
  }
  if (publicKeyId(pub) !== a.key_id) return `its public key is not the key ${String(a.key_id).slice(0, 12)} it names`;
  let ok = false;
  try {
    ok = verify(null, signedPayload(a), pub, Buffer.from(String(a.signature), 'base64'));
  } catch {
    ok = false;
  }
  return ok ? null : 'its signature does not verify (the approval was changed after it was signed, or signed by another key)';
}

/** An approval's identity (what a ref event lists): sha256 of its signature bytes. */
export function approvalId(a: Pick<Approval, 'signature'>): string {
  return sha256Hex(String(a.signature));
}

// ---------------------------------------------------------------- risk

export type Risk = 'low' | 'high';

/**
 * A fact's risk. High when any rule says so: its own `risk: "high"` (or
 * any value but "low"); op
 * `forget` (removing knowledge is irreversible in effect for users and often
 * a legal request); a subject declared a person (`subject_type: "person"`);
 * a relation about people (the config's `risk.person_relations`). A fact's
 * own `risk: "low"` cannot lower a rule's "high" (else any author could skip
 * approval).
 */
export function factRisk(f: Record<string, unknown>, rules: RiskRules): { risk: Risk; reasons: string[] } {
  const reasons: string[] = [];
  const id = typeof f.id === 'string' ? f.id : '?';
  // fail safe: any risk other than "low" (a typo too) counts as high
  if (f.risk !== undefined && f.risk !== 'low') reasons.push(`${id}: marked risk ${JSON.stringify(f.risk)}`);
  if (f.op === 'forget') reasons.push(`${id}: op forget`);
  if (f.subject_type === 'person') reasons.push(`${id}: subject is a person`);
  if (typeof f.relation === 'string' && rules.person_relations.includes(f.relation)) reasons.push(`${id}: relation ${f.relation} is about a person`);
  return { risk: reasons.length > 0 ? 'high' : 'low', reasons };
}

/** A bundle's risk: the highest of its facts'; a negation (task-arithmetic forgetting) is high too. */
export function bundleRisk(m: BundleManifest, rules: RiskRules): { risk: Risk; reasons: string[] } {
  const reasons: string[] = [];
  if (m.method === 'negate') reasons.push(`${m.id}: a negation removes knowledge`);
  for (const f of m.facts) reasons.push(...factRisk(f, rules).reasons);
  return { risk: reasons.length > 0 ? 'high' : 'low', reasons };
}
