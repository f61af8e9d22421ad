// Validates every manifest in docker/k8s against Kubernetes' published
// OpenAPI schemas (npm's kubernetes-models, offline), then checks what the
// API server or the kubelet would catch but a schema cannot: probe ports
// that name no container port or are not IANA service names, selectors that
// select nothing, a grace period shorter than the drain, a memory limit under
// the server's own QLINEAR_MAX_MEMORY_MB. Deliberately broken copies (a probe
// port as text, a container port as text) must fail.
//
//   npm ci --prefix docker/k8s/validate && npm test --prefix docker/k8s/validate
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";

const k8sDir = join(dirname(fileURLToPath(import.meta.url)), "..");

// The manifests: every *.yaml beside kustomization.yaml, document by document.
function loadManifests() {
  const files = readdirSync(k8sDir).filter((f) => f.endsWith(".yaml") && f !== "kustomization.yaml");
  const docs = [];
  for (const file of files.sort()) {
    for (const doc of parseAllDocuments(readFileSync(join(k8sDir, file), "utf8"))) {
      if (doc.errors.length) throw new Error(`${file}: YAML: ${doc.errors[0].message}`);
      const obj = doc.toJS();
      if (obj !== null) docs.push({ file, obj });
    }
  }
  return docs;
}

// schemaErrors: kubernetes-models' validation of one object against the
// schema of its apiVersion and kind.
async function schemaErrors({ file, obj }) {
  const where = `${file}: ${obj.kind ?? "(no kind)"} ${obj.metadata?.name ?? "(no name)"}`;
  if (typeof obj.apiVersion !== "string" || typeof obj.kind !== "string") {
    return [`${where}: apiVersion and kind must be strings`];
  }
  let models;
  try {
    models = await import(`kubernetes-models/${obj.apiVersion}`);
  } catch {
    return [`${where}: unknown apiVersion '${obj.apiVersion}'`];
  }
  const Model = models[obj.kind];
  if (!Model) return [`${where}: no kind '${obj.kind}' in ${obj.apiVersion}`];
  try {
    new Model(obj).validate();
    return [];
  } catch (e) {
    return [`${where}: ${e.message}`];
  }
}

// IANA_SVC_NAME, as the API server checks a named port: 1-15 characters of
// a-z, 0-9 and '-', at least one letter, no '-' at either end or twice.
const isPortName = (s) =>
  /^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$/.test(s) && /[a-z]/.test(s) && !s.includes("--");

function portErrors(where, port, declared) {
  if (Number.isInteger(port)) {
    return port >= 1 && port <= 65535 ? [] : [`${where}: port ${port} is not in [1, 65535]`];
  }
  if (typeof port !== "string") return [`${where}: port must be a number or a port name; got ${JSON.stringify(port)}`];
  if (!isPortName(port)) {
    return [`${where}: port '${port}' is text but not a port name (a number must not be quoted)`];
  }
  return declared.has(port) ? [] : [`${where}: port '${port}' names no port of the container`];
}

const podSpecOf = (obj) => obj.spec?.template?.spec;
const podLabelsOf = (obj) => obj.spec?.template?.metadata?.labels ?? {};
const selects = (selector, labels) =>
  selector && Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => labels[k] === v);

// semanticErrors: what the schema cannot see, over the whole set.
function semanticErrors(docs) {
  const errors = [];
  const settings = Object.assign({}, ...docs.filter((d) => d.obj.kind === "ConfigMap").map((d) => d.obj.data ?? {}));
  const workloads = docs.filter((d) => ["Deployment", "StatefulSet"].includes(d.obj.kind));
  if (!workloads.some((d) => d.obj.kind === "Deployment")) errors.push("no Deployment");
  const claims = new Set(docs.filter((d) => d.obj.kind === "PersistentVolumeClaim").map((d) => d.obj.metadata.name));
  for (const { file, obj } of workloads) {
    const name = `${file}: ${obj.kind} ${obj.metadata?.name}`;
    const spec = podSpecOf(obj) ?? {};
    if (!selects(obj.spec?.selector?.matchLabels, podLabelsOf(obj))) {
      errors.push(`${name}: spec.selector.matchLabels does not select the template's labels`);
    }
    if (spec.securityContext?.runAsNonRoot !== true) errors.push(`${name}: runAsNonRoot must be true`);
    const drain = Number(settings.QLINEAR_DRAIN_TIMEOUT_S ?? 30);
    for (const c of spec.containers ?? []) {
      const where = `${name}: container ${c.name}`;
      const declared = new Set((c.ports ?? []).map((p) => p.name).filter(Boolean));
      for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
        const p = c[probe];
        if (!p) {
          if (probe !== "startupProbe") errors.push(`${where}: no ${probe}`);
          continue;
        }
        const handler = p.httpGet ?? p.tcpSocket ?? p.grpc;
        if (!handler) errors.push(`${where}: ${probe} has no httpGet, tcpSocket or grpc`);
        else if (p.grpc && !Number.isInteger(p.grpc.port)) errors.push(`${where}: ${probe}.grpc.port must be a number`);
        else errors.push(...portErrors(`${where}: ${probe}`, handler.port, declared));
      }
      if (c.securityContext?.readOnlyRootFilesystem !== true) errors.push(`${where}: readOnlyRootFilesystem must be true`);
      const pause = c.lifecycle?.preStop?.exec?.command?.[0] === "sleep" ? Number(c.lifecycle.preStop.exec.command[1]) : 0;
      const grace = spec.terminationGracePeriodSeconds ?? 30;
      if (grace <= drain + pause) {
        errors.push(`${name}: terminationGracePeriodSeconds ${grace} must exceed the preStop pause ${pause} s + QLINEAR_DRAIN_TIMEOUT_S ${drain} s`);
      }
      const limit = c.resources?.limits?.memory;
      const mib = typeof limit === "string" && /^\d+Mi$/.test(limit) ? Number(limit.slice(0, -2))
                : typeof limit === "string" && /^\d+Gi$/.test(limit) ? Number(limit.slice(0, -2)) * 1024 : NaN;
      if (Number.isNaN(mib)) errors.push(`${where}: limits.memory must be given in Mi or Gi; got ${limit}`);
      else if (settings.QLINEAR_MAX_MEMORY_MB && Number(settings.QLINEAR_MAX_MEMORY_MB) >= mib) {
        errors.push(`${where}: QLINEAR_MAX_MEMORY_MB ${settings.QLINEAR_MAX_MEMORY_MB} must be below the memory limit ${limit}`);
      }
      for (const m of c.volumeMounts ?? []) {
        if (m.mountPath === "/models" && m.readOnly !== true) errors.push(`${where}: /models must be mounted readOnly`);
      }
    }
    for (const v of spec.volumes ?? []) {
      const claim = v.persistentVolumeClaim?.claimName;
      if (claim && !claims.has(claim)) errors.push(`${name}: volume ${v.name} claims '${claim}', which no manifest defines`);
    }
  }
  const podLabels = workloads.map((d) => podLabelsOf(d.obj));
  const containerPorts = new Set(
    workloads.flatMap((d) => (podSpecOf(d.obj)?.containers ?? []).flatMap((c) => (c.ports ?? []).flatMap((p) => [p.containerPort, p.name]))));
  for (const { file, obj } of docs) {
    const name = `${file}: ${obj.kind} ${obj.metadata?.name}`;
    if (obj.kind === "Service") {
      if (!podLabels.some((l) => selects(obj.spec?.selector, l))) errors.push(`${name}: its selector selects no pod`);
      for (const p of obj.spec?.ports ?? []) {
        if (!containerPorts.has(p.targetPort ?? p.port)) errors.push(`${name}: targetPort ${p.targetPort} is no container's port`);
      }
    }
    if (obj.kind === "PodDisruptionBudget" && !podLabels.some((l) => selects(obj.spec?.selector?.matchLabels, l))) {
      errors.push(`${name}: its selector selects no pod`);
    }
    if (obj.kind === "HorizontalPodAutoscaler") {
      const ref = obj.spec?.scaleTargetRef ?? {};
      if (!workloads.some((d) => d.obj.kind === ref.kind && d.obj.metadata?.name === ref.name)) {
        errors.push(`${name}: scaleTargetRef ${ref.kind}/${ref.name} is no workload here`);
      }
    }
  }
  return errors;
}

async function validate(docs) {
  const errors = [];
  for (const d of docs) errors.push(...(await schemaErrors(d)));
  return errors.concat(semanticErrors(docs));
}

test("every manifest validates against Kubernetes' schemas and holds together", async () => {
  const docs = loadManifests();
  const kinds = docs.map((d) => d.obj.kind).sort();
  for (const kind of ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim",
                      "PodDisruptionBudget", "Service", "StatefulSet"]) {
    assert.ok(kinds.includes(kind), `no ${kind} among ${kinds.join(", ")}`);
  }
  assert.ok(docs.filter((d) => d.obj.kind === "Service").some((d) => d.obj.spec.clusterIP === "None"), "no headless Service");
  assert.deepEqual(await validate(docs), []);
});

test("kustomization.yaml lists every manifest but the StatefulSet variant", () => {
  const k = parseAllDocuments(readFileSync(join(k8sDir, "kustomization.yaml"), "utf8"))[0].toJS();
  assert.equal(k.kind, "Kustomization");
  const files = readdirSync(k8sDir).filter((f) => f.endsWith(".yaml") && f !== "kustomization.yaml");
  assert.deepEqual([...k.resources].sort(), files.filter((f) => f !== "statefulset.yaml").sort());
});

// brokenCopy(edit): a fresh copy of the set with `edit` applied to the Deployment.
function brokenCopy(edit) {
  const docs = loadManifests();
  edit(docs.find((d) => d.obj.kind === "Deployment").obj.spec.template.spec.containers[0]);
  return docs;
}

test("a probe port as text fails", async () => {
  const errors = await validate(brokenCopy((c) => { c.readinessProbe.httpGet.port = "9464"; }));
  assert.equal(errors.length, 1, errors.join("\n"));
  assert.match(errors[0], /readinessProbe: port '9464' is text but not a port name/);
  const named = await validate(brokenCopy((c) => { c.livenessProbe.httpGet.port = "metrix"; }));
  assert.match(named.join("\n"), /livenessProbe: port 'metrix' names no port of the container/);
});

test("a container port as text fails the schema", async () => {
  const errors = await validate(brokenCopy((c) => { c.ports[1].containerPort = "9464"; }));
  assert.match(errors.join("\n"), /deployment\.yaml: Deployment qlinear: .*containerPort must be integer/);
});

test("a grace period shorter than the drain fails", async () => {
  const docs = loadManifests();
  docs.find((d) => d.obj.kind === "Deployment").obj.spec.template.spec.terminationGracePeriodSeconds = 30;
  assert.match((await validate(docs)).join("\n"), /terminationGracePeriodSeconds 30 must exceed the preStop pause 5 s \+ QLINEAR_DRAIN_TIMEOUT_S 30 s/);
});
