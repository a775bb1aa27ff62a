// Validates Kubernetes custom resources against the schemas their projects publish, as the
// kubernetes-models packages ship them (generated from each project's CRDs or Go types).
//
// Reads a JSON array of manifests on stdin; prints one JSON array with, for each manifest,
// {apiVersion, kind, name, covered, errors}: covered = false when no package here has that
// kind (the chart tests then check it against the project's API reference themselves).
//
// The packages' validators check types, enums, required fields, patterns and formats; they
// do not reject an unknown field (the CRDs leave that to the API server, which prunes it), so
// the chart tests also assert the hashing policies' specs whole.

const MODELS = {
  "gateway.networking.k8s.io/v1 HTTPRoute":
    "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute",
  "gateway.envoyproxy.io/v1alpha1 BackendTrafficPolicy":
    "@kubernetes-models/envoy-gateway/gateway.envoyproxy.io/v1alpha1/BackendTrafficPolicy",
  "networking.istio.io/v1 DestinationRule":
    "@kubernetes-models/istio/networking.istio.io/v1/DestinationRule",
  "keda.sh/v1alpha1 ScaledObject": "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject",
  "monitoring.coreos.com/v1 ServiceMonitor":
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor",
  "monitoring.coreos.com/v1 PrometheusRule":
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule",
};

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf8");
}

const manifests = JSON.parse(await readStdin());
const results = [];
for (const doc of manifests) {
  const key = `${doc.apiVersion} ${doc.kind}`;
  const result = { apiVersion: doc.apiVersion, kind: doc.kind, name: doc.metadata?.name, covered: false, errors: [] };
  const module = MODELS[key];
  if (module) {
    result.covered = true;
    const Model = (await import(module))[doc.kind];
    try {
      new Model(doc).validate();
    } catch (err) {
      result.errors.push(String(err.message ?? err));
    }
  }
  results.push(result);
}
process.stdout.write(JSON.stringify(results) + "\n");
