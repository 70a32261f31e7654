package check

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

const (
	chartDir        = "../spike"
	release         = "spike"
	namespace       = "secrets"
	nexusName       = "spike-nexus"
	keeperName      = "spike-keeper"
	fiveReplicaFile = "../spike/values-5-replicas.yaml"
	svidSocket      = "unix:///spiffe-workload-api/spire-agent.sock"
)

// helm runs the helm built from the module (SPIKE_HELM, set by ./run), or
// `go tool helm` when run by hand.
func helm(args ...string) ([]byte, error) {
	var command *exec.Cmd
	if binary := os.Getenv("SPIKE_HELM"); binary != "" {
		command = exec.Command(binary, args...)
	} else {
		command = exec.Command("go", append([]string{"tool", "helm"}, args...)...)
	}
	var stderr bytes.Buffer
	command.Stderr = &stderr
	out, err := command.Output()
	if err != nil {
		return out, fmt.Errorf("helm %s: %w\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return out, nil
}

func render(t *testing.T, args ...string) []byte {
	t.Helper()
	out, err := helm(append([]string{"template", release, chartDir, "--namespace", namespace}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// rendered is one render decoded: every object by kind and name.
type rendered struct {
	objects map[string]any // "Kind/name"
	kinds   map[string]int
}

func decodeAll(t *testing.T, out []byte) rendered {
	t.Helper()
	docs, err := SplitDocuments(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) == 0 {
		t.Fatal("helm template rendered no document")
	}
	result := rendered{objects: map[string]any{}, kinds: map[string]int{}}
	for _, doc := range docs {
		kind, value, err := DecodeStrict(doc)
		if err != nil {
			t.Fatalf("strict decoding failed: %v\n%s", err, doc)
		}
		name := objectName(t, value)
		key := kind.Kind + "/" + name
		if _, twice := result.objects[key]; twice {
			t.Fatalf("%s rendered twice", key)
		}
		result.objects[key] = value
		result.kinds[kind.Kind]++
	}
	return result
}

func objectName(t *testing.T, value any) string {
	t.Helper()
	type named interface{ GetName() string }
	if object, ok := value.(named); ok {
		return object.GetName()
	}
	t.Fatalf("%T has no name", value)
	return ""
}

func get[T any](t *testing.T, r rendered, kind, name string) T {
	t.Helper()
	value, ok := r.objects[kind+"/"+name]
	if !ok {
		t.Fatalf("%s/%s not rendered", kind, name)
	}
	typed, ok := value.(T)
	if !ok {
		t.Fatalf("%s/%s is a %T", kind, name, value)
	}
	return typed
}

func TestLint(t *testing.T) {
	for name, args := range map[string][]string{
		"default":    nil,
		"5 replicas": {"--values", fiveReplicaFile},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := helm(append([]string{"lint", "--strict", chartDir}, args...)...); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// allOptional turns on every optional object and the other SVID source.
var allOptional = []string{
	"--set", "svid.source=hostPath",
	"--set", "metrics.serviceMonitor.enabled=true",
	"--set", "metrics.dashboard.enabled=true",
	"--set", "clusterSPIFFEID.pilotRoles={superuser,recover,restore}",
}

func TestRenderedObjectsDecodeStrictly(t *testing.T) {
	cases := []struct {
		name            string
		args            []string
		nexus, keepers  int32
		threshold       string
		optionalObjects bool
	}{
		{name: "default", nexus: 3, keepers: 3, threshold: "2"},
		{name: "5 replicas", args: []string{"--values", fiveReplicaFile}, nexus: 5, keepers: 5, threshold: "3"},
		{name: "default, every option", args: allOptional, nexus: 3, keepers: 3, threshold: "2", optionalObjects: true},
		{name: "5 replicas, every option", args: append([]string{"--values", fiveReplicaFile}, allOptional...),
			nexus: 5, keepers: 5, threshold: "3", optionalObjects: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := decodeAll(t, render(t, c.args...))
			checkNexus(t, r, c.nexus, c.keepers, c.threshold)
			checkKeepers(t, r, c.keepers)
			checkServices(t, r, c.nexus, c.keepers)
			checkSpiffeIDs(t, r, c.optionalObjects)
			wantHostPath := c.optionalObjects
			for _, name := range []string{nexusName, keeperName} {
				checkSvidVolume(t, get[*appsv1.StatefulSet](t, r, "StatefulSet", name), wantHostPath)
			}
			if c.optionalObjects {
				checkMonitoring(t, r)
			} else if r.kinds["ServiceMonitor"] != 0 || r.kinds["ConfigMap"] != 0 {
				t.Errorf("optional objects rendered by default: %v", r.kinds)
			}
		})
	}
}

func checkNexus(t *testing.T, r rendered, replicas, keepers int32, threshold string) {
	set := get[*appsv1.StatefulSet](t, r, "StatefulSet", nexusName)
	if set.Spec.Replicas == nil || *set.Spec.Replicas != replicas {
		t.Errorf("nexus replicas %v, want %d", set.Spec.Replicas, replicas)
	}
	if set.Spec.ServiceName != nexusName+"-headless" {
		t.Errorf("nexus serviceName %q", set.Spec.ServiceName)
	}
	if set.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		t.Errorf("nexus podManagementPolicy %q: ordered start-up waits for a quorum that cannot form", set.Spec.PodManagementPolicy)
	}
	if len(set.Spec.VolumeClaimTemplates) != 1 {
		t.Fatalf("nexus has %d volumeClaimTemplates, want 1", len(set.Spec.VolumeClaimTemplates))
	}
	pod := set.Spec.Template.Spec
	var anti *corev1.PodAntiAffinity
	if pod.Affinity != nil {
		anti = pod.Affinity.PodAntiAffinity
	}
	if anti == nil || len(anti.RequiredDuringSchedulingIgnoredDuringExecution) != 1 ||
		anti.RequiredDuringSchedulingIgnoredDuringExecution[0].TopologyKey != "kubernetes.io/hostname" {
		t.Errorf("nexus has no required anti-affinity across nodes: %+v", pod.Affinity)
	}
	container := onlyContainer(t, set)
	checkSecurity(t, pod, container)
	env := envOf(container)
	healthPort := portNamed(t, container, "health")
	if want := fmt.Sprintf("0.0.0.0:%d", healthPort); env["SPIKE_NEXUS_HEALTH_ADDR"] != want {
		t.Errorf("SPIKE_NEXUS_HEALTH_ADDR %q, want %q (the probes' port)", env["SPIKE_NEXUS_HEALTH_ADDR"], want)
	}
	for probeName, probe := range map[string]*corev1.Probe{"/readyz": container.ReadinessProbe, "/livez": container.LivenessProbe} {
		if probe == nil || probe.HTTPGet == nil {
			t.Errorf("no HTTP probe for %s", probeName)
			continue
		}
		get := probe.HTTPGet
		if get.Path != probeName || get.Port != intstr.FromString("health") || get.Scheme != corev1.URISchemeHTTP {
			t.Errorf("probe %+v, want HTTP %s on port health", get, probeName)
		}
	}
	if env["SPIKE_NEXUS_SHAMIR_SHARES"] != fmt.Sprint(keepers) || env["SPIKE_NEXUS_SHAMIR_THRESHOLD"] != threshold {
		t.Errorf("Shamir n/t %q/%q, want %d/%s", env["SPIKE_NEXUS_SHAMIR_SHARES"], env["SPIKE_NEXUS_SHAMIR_THRESHOLD"], keepers, threshold)
	}
	if mount := mountAt(container, "/var/lib/spike/nexus"); mount == nil || mount.Name != set.Spec.VolumeClaimTemplates[0].Name {
		t.Errorf("the data volume is not mounted at /var/lib/spike/nexus")
	}
	if !strings.HasPrefix(env["SPIKE_NEXUS_DATA_DIR"], "/var/lib/spike/nexus/") {
		t.Errorf("SPIKE_NEXUS_DATA_DIR %q is not on the volume", env["SPIKE_NEXUS_DATA_DIR"])
	}

	budget := get[*policyv1.PodDisruptionBudget](t, r, "PodDisruptionBudget", nexusName)
	if budget.Spec.MaxUnavailable == nil || *budget.Spec.MaxUnavailable != intstr.FromInt32(1) || budget.Spec.MinAvailable != nil {
		t.Errorf("nexus PodDisruptionBudget %+v, want maxUnavailable 1", budget.Spec)
	}
	if !selects(budget.Spec.Selector.MatchLabels, set.Spec.Template.Labels) {
		t.Errorf("the PodDisruptionBudget does not select the nexus pods")
	}
}

func checkKeepers(t *testing.T, r rendered, replicas int32) {
	set := get[*appsv1.StatefulSet](t, r, "StatefulSet", keeperName)
	if set.Spec.Replicas == nil || *set.Spec.Replicas != replicas {
		t.Errorf("keeper replicas %v, want %d", set.Spec.Replicas, replicas)
	}
	if len(set.Spec.VolumeClaimTemplates) != 0 {
		t.Errorf("keepers have volumeClaimTemplates: shares must live in memory only")
	}
	for _, volume := range set.Spec.Template.Spec.Volumes {
		if volume.Name != "spiffe-workload-api" {
			t.Errorf("keeper volume %q: shares must live in memory only", volume.Name)
		}
	}
	container := onlyContainer(t, set)
	checkSecurity(t, set.Spec.Template.Spec, container)
	budget := get[*policyv1.PodDisruptionBudget](t, r, "PodDisruptionBudget", keeperName)
	if budget.Spec.MaxUnavailable == nil || *budget.Spec.MaxUnavailable != intstr.FromInt32(1) {
		t.Errorf("keeper PodDisruptionBudget %+v, want maxUnavailable 1", budget.Spec)
	}
}

// checkServices: one ClusterIP per replica and keeper, reachable before
// the pod is ready (a replica is ready only once its peers reached it).
func checkServices(t *testing.T, r rendered, replicas, keepers int32) {
	for prefix, count := range map[string]int32{nexusName: replicas, keeperName: keepers} {
		for ordinal := range count {
			name := fmt.Sprintf("%s-%d", prefix, ordinal)
			service := get[*corev1.Service](t, r, "Service", name)
			if !service.Spec.PublishNotReadyAddresses || service.Spec.ClusterIP == corev1.ClusterIPNone {
				t.Errorf("Service %s: want a ClusterIP publishing not-ready addresses", name)
			}
			if service.Spec.Selector["statefulset.kubernetes.io/pod-name"] != name {
				t.Errorf("Service %s selects %v", name, service.Spec.Selector)
			}
		}
		if _, extra := r.objects[fmt.Sprintf("Service/%s-%d", prefix, count)]; extra {
			t.Errorf("a Service for %s-%d, beyond the replicas", prefix, count)
		}
	}
}

func checkSpiffeIDs(t *testing.T, r rendered, pilotRoles bool) {
	want := map[string]string{
		"nexus":  "spiffe://{{ .TrustDomain }}/spike/nexus/{{ .PodMeta.Name }}",
		"keeper": "spiffe://{{ .TrustDomain }}/spike/keeper/{{ .PodMeta.Name }}",
	}
	if pilotRoles {
		for _, role := range []string{"superuser", "recover", "restore"} {
			want["pilot-"+role] = "spiffe://{{ .TrustDomain }}/spike/pilot/role/" + role
		}
	}
	if r.kinds["ClusterSPIFFEID"] != len(want) {
		t.Errorf("%d ClusterSPIFFEIDs, want %d", r.kinds["ClusterSPIFFEID"], len(want))
	}
	for component, template := range want {
		id := get[*ClusterSPIFFEID](t, r, "ClusterSPIFFEID", fmt.Sprintf("spike-%s-%s", namespace, component))
		if id.Spec.SPIFFEIDTemplate != template {
			t.Errorf("%s: spiffeIDTemplate %q, want %q", component, id.Spec.SPIFFEIDTemplate, template)
		}
		if id.Spec.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] != namespace {
			t.Errorf("%s: namespaceSelector %v", component, id.Spec.NamespaceSelector)
		}
		if set, ok := r.objects["StatefulSet/spike-"+component].(*appsv1.StatefulSet); ok &&
			!selects(id.Spec.PodSelector.MatchLabels, set.Spec.Template.Labels) {
			t.Errorf("%s: the ClusterSPIFFEID does not select its pods", component)
		}
	}
}

func checkSvidVolume(t *testing.T, set *appsv1.StatefulSet, hostPath bool) {
	var volume *corev1.Volume
	for i := range set.Spec.Template.Spec.Volumes {
		if set.Spec.Template.Spec.Volumes[i].Name == "spiffe-workload-api" {
			volume = &set.Spec.Template.Spec.Volumes[i]
		}
	}
	switch {
	case volume == nil:
		t.Fatalf("%s: no SVID volume", set.Name)
	case hostPath && (volume.HostPath == nil || volume.HostPath.Path != "/run/spire/agent-sockets"):
		t.Errorf("%s: SVID volume %+v, want the agent socket directory", set.Name, volume.VolumeSource)
	case !hostPath && (volume.CSI == nil || volume.CSI.Driver != "csi.spiffe.io" || !*volume.CSI.ReadOnly):
		t.Errorf("%s: SVID volume %+v, want the SPIFFE CSI driver, read-only", set.Name, volume.VolumeSource)
	}
	container := onlyContainer(t, set)
	if envOf(container)["SPIFFE_ENDPOINT_SOCKET"] != svidSocket {
		t.Errorf("%s: SPIFFE_ENDPOINT_SOCKET %q, want %q", set.Name, envOf(container)["SPIFFE_ENDPOINT_SOCKET"], svidSocket)
	}
	if mount := mountAt(container, "/spiffe-workload-api"); mount == nil || mount.Name != volume.Name || !mount.ReadOnly {
		t.Errorf("%s: the SVID volume is not mounted read-only where the socket is", set.Name)
	}
}

func checkMonitoring(t *testing.T, r rendered) {
	monitor := get[*monitoringv1.ServiceMonitor](t, r, "ServiceMonitor", nexusName)
	headless := get[*corev1.Service](t, r, "Service", nexusName+"-headless")
	if !selects(monitor.Spec.Selector.MatchLabels, headless.Labels) {
		t.Errorf("the ServiceMonitor does not select the headless Service")
	}
	for _, service := range []string{nexusName, nexusName + "-0"} {
		if selects(monitor.Spec.Selector.MatchLabels, get[*corev1.Service](t, r, "Service", service).Labels) {
			t.Errorf("the ServiceMonitor also selects %s: every replica would be scraped twice", service)
		}
	}
	if len(monitor.Spec.Endpoints) != 1 {
		t.Fatalf("%d ServiceMonitor endpoints", len(monitor.Spec.Endpoints))
	}
	endpoint := monitor.Spec.Endpoints[0]
	if endpoint.Port != "health" || endpoint.Path != "/metrics" {
		t.Errorf("ServiceMonitor endpoint %+v, want /metrics on port health", endpoint)
	}
	if !hasPort(headless, "health") {
		t.Errorf("the headless Service has no health port")
	}
	dashboard := get[*corev1.ConfigMap](t, r, "ConfigMap", "spike-dashboard")
	want, err := os.ReadFile(filepath.Join(chartDir, "dashboards", "spike.json"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(dashboard.Data["spike.json"]) != strings.TrimSpace(string(want)) {
		t.Errorf("the dashboard ConfigMap does not hold dashboards/spike.json")
	}
	if dashboard.Labels["grafana_dashboard"] != "1" {
		t.Errorf("the dashboard ConfigMap lacks the grafana_dashboard label")
	}
}

func checkSecurity(t *testing.T, pod corev1.PodSpec, container corev1.Container) {
	t.Helper()
	context := container.SecurityContext
	switch {
	case context == nil:
		t.Fatalf("container %s has no securityContext", container.Name)
	case context.RunAsNonRoot == nil || !*context.RunAsNonRoot,
		context.ReadOnlyRootFilesystem == nil || !*context.ReadOnlyRootFilesystem,
		context.AllowPrivilegeEscalation == nil || *context.AllowPrivilegeEscalation,
		context.SeccompProfile == nil || context.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault,
		context.Capabilities == nil || fmt.Sprint(context.Capabilities.Drop) != "[ALL]" ||
			fmt.Sprint(context.Capabilities.Add) != "[IPC_LOCK]":
		t.Errorf("container %s securityContext not hardened: %+v", container.Name, context)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Errorf("container %s gets a Kubernetes API token it does not need", container.Name)
	}
}

func onlyContainer(t *testing.T, set *appsv1.StatefulSet) corev1.Container {
	t.Helper()
	if len(set.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("%s has %d containers", set.Name, len(set.Spec.Template.Spec.Containers))
	}
	return set.Spec.Template.Spec.Containers[0]
}

func envOf(container corev1.Container) map[string]string {
	env := map[string]string{}
	for _, variable := range container.Env {
		env[variable.Name] = variable.Value
	}
	return env
}

func portNamed(t *testing.T, container corev1.Container, name string) int32 {
	t.Helper()
	for _, port := range container.Ports {
		if port.Name == name {
			return port.ContainerPort
		}
	}
	t.Fatalf("container %s has no port %s", container.Name, name)
	return 0
}

func mountAt(container corev1.Container, path string) *corev1.VolumeMount {
	for i := range container.VolumeMounts {
		if container.VolumeMounts[i].MountPath == path {
			return &container.VolumeMounts[i]
		}
	}
	return nil
}

func hasPort(service *corev1.Service, name string) bool {
	for _, port := range service.Spec.Ports {
		if port.Name == name {
			return true
		}
	}
	return false
}

// selects reports whether every label of selector is on labels.
func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for key, value := range selector {
		if labels[key] != value {
			return false
		}
	}
	return true
}

// A misspelled or unknown field, or an unknown kind, must fail: otherwise
// the strict check above could pass on anything.
func TestStrictDecodingRefusesWhatTheAPIDoesNotKnow(t *testing.T) {
	docs, err := SplitDocuments(render(t, allOptional...))
	if err != nil {
		t.Fatal(err)
	}
	find := func(kind, marker string) []byte {
		for _, doc := range docs {
			if bytes.Contains(doc, []byte("kind: "+kind+"\n")) && bytes.Contains(doc, []byte(marker)) {
				return doc
			}
		}
		t.Fatalf("no rendered %s containing %q", kind, marker)
		return nil
	}
	statefulSet := find("StatefulSet", "name: "+nexusName+"\n")
	cases := []struct{ name, kind, marker, from, to string }{
		{"top-level spec field", "StatefulSet", "name: " + nexusName + "\n", "\n  replicas: ", "\n  replicaz: "},
		{"nested probe field", "StatefulSet", "name: " + nexusName + "\n", "readinessProbe:", "readinesProbe:"},
		{"security context field", "StatefulSet", "name: " + keeperName + "\n", "readOnlyRootFilesystem:", "readOnlyRootFileSystem:"},
		{"PodDisruptionBudget field", "PodDisruptionBudget", "name: " + nexusName + "\n", "maxUnavailable:", "maxUnavailible:"},
		{"ServiceMonitor field", "ServiceMonitor", "kind: ServiceMonitor", "scrapeTimeout:", "scrapeTimout:"},
		{"ClusterSPIFFEID field", "ClusterSPIFFEID", "/spike/nexus/", "spiffeIDTemplate:", "spiffeIdTemplate:"},
		{"unknown kind", "StatefulSet", "name: " + nexusName + "\n", "kind: StatefulSet", "kind: StatefullSet"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			doc := find(c.kind, c.marker)
			if _, _, err := DecodeStrict(doc); err != nil {
				t.Fatalf("the unaltered document fails: %v", err)
			}
			broken := bytes.Replace(doc, []byte(c.from), []byte(c.to), 1)
			if bytes.Equal(broken, doc) {
				t.Fatalf("%q is not in the rendered %s", c.from, c.kind)
			}
			if _, _, err := DecodeStrict(broken); err == nil {
				t.Fatalf("strict decoding accepted %q", c.to)
			}
		})
	}
	duplicated := bytes.Replace(statefulSet, []byte("\n  replicas: 3\n"), []byte("\n  replicas: 3\n  replicas: 5\n"), 1)
	if _, _, err := DecodeStrict(duplicated); err == nil {
		t.Error("strict decoding accepted a duplicated field")
	}
}

func TestValuesTheBinariesWouldRefuseFailTheRender(t *testing.T) {
	cases := map[string]struct {
		set     []string
		message string
	}{
		"4 replicas":           {[]string{"nexus.replicas=4"}, "nexus.replicas must be 3 or 5"},
		"threshold 1":          {[]string{"keeper.threshold=1"}, "keeper.threshold (Shamir t) must be 2"},
		"threshold above n":    {[]string{"keeper.threshold=4"}, "keeper.threshold (Shamir t) must be 2"},
		"founders above n":     {[]string{"nexus.founders=4"}, "nexus.founders must be 1 to nexus.replicas"},
		"unknown SVID source":  {[]string{"svid.source=file"}, "value must be one of 'csi', 'hostPath'"},
		"unknown pilot role":   {[]string{"clusterSPIFFEID.pilotRoles={admin}"}, "value must be one of 'superuser', 'recover', 'restore'"},
		"a misspelled value":   {[]string{"nexus.replica=5"}, "additional properties 'replica' not allowed"},
		"a port out of range":  {[]string{"nexus.ports.health=70000"}, "/nexus/ports/health"},
		"founder's id changed": {[]string{"nexus.nodeIds.1=9"}, "is not an ordinal at or above nexus.founders"},
		"an id taken twice":    {[]string{"nexus.replicas=5", "nexus.nodeIds.3=7", "nexus.nodeIds.4=7"}, "id 7 of ordinal 4 is taken"},
		"a pod's default id":   {[]string{"nexus.replicas=5", "nexus.nodeIds.4=2"}, "id 2 of ordinal 4 is taken"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			args := []string{"template", release, chartDir}
			for _, value := range c.set {
				args = append(args, "--set", value)
			}
			_, err := helm(args...)
			if err == nil || !strings.Contains(err.Error(), c.message) {
				t.Fatalf("want a failure saying %q, got %v", c.message, err)
			}
		})
	}
}

// The container command derives the node id from the pod's ordinal and
// builds the peer and keeper lists from the per-replica Services: run it
// with a stand-in getent and nexus to see what the binary would be given.
func TestNexusCommandBuildsThePeerList(t *testing.T) {
	dir := t.TempDir()
	writeScript(t, filepath.Join(dir, "getent"), `#!/bin/sh
# Service spike-nexus-N answers 10.0.1.N, spike-keeper-N 10.0.2.N.
case "$2" in
  spike-nexus-*.secrets.svc.cluster.local) n="${2#spike-nexus-}"; echo "10.0.1.${n%%.*}    $2" ;;
  spike-keeper-*.secrets.svc.cluster.local) n="${2#spike-keeper-}"; echo "10.0.2.${n%%.*}    $2" ;;
  *) exit 2 ;;
esac
`)
	nexus := filepath.Join(dir, "nexus")
	writeScript(t, nexus, `#!/bin/sh
echo "id=$SPIKE_NEXUS_NODE_ID peers=${SPIKE_NEXUS_PEERS:-} join=${SPIKE_NEXUS_JOIN:-} keepers=$SPIKE_NEXUS_KEEPER_PEERS args=$*"
`)
	run := func(t *testing.T, hostname string, args ...string) string {
		t.Helper()
		r := decodeAll(t, render(t, append(args, "--set", "image.nexusPath="+nexus)...))
		container := onlyContainer(t, get[*appsv1.StatefulSet](t, r, "StatefulSet", nexusName))
		command := exec.Command(container.Command[0], container.Command[1:]...)
		command.Env = []string{"PATH=" + dir + ":/usr/bin:/bin", "HOSTNAME=" + hostname}
		out, err := command.CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	listen := "args=--cluster-addr 0.0.0.0:8554 --api-addr 0.0.0.0:8553"
	got := run(t, "spike-nexus-1")
	want := "id=2 peers=1=10.0.1.0:8554/10.0.1.0:8553,2=10.0.1.1:8554/10.0.1.1:8553,3=10.0.1.2:8554/10.0.1.2:8553 join= " +
		"keepers=10.0.2.0:8443,10.0.2.1:8443,10.0.2.2:8443 " + listen
	if got != want {
		t.Errorf("replica 1 of 3:\n got %s\nwant %s", got, want)
	}
	// Grown from 3 to 5: the new replicas wait to be added.
	got = run(t, "spike-nexus-4", "--values", fiveReplicaFile, "--set", "nexus.founders=3")
	want = "id=5 peers= join=true keepers=10.0.2.0:8443,10.0.2.1:8443,10.0.2.2:8443,10.0.2.3:8443,10.0.2.4:8443 " + listen
	if got != want {
		t.Errorf("replica 4 of 5 after growing:\n got %s\nwant %s", got, want)
	}
	// Grown again after replicas 4 and 5 were removed: their ids are retired.
	got = run(t, "spike-nexus-3", "--values", fiveReplicaFile, "--set", "nexus.founders=3",
		"--set", "nexus.nodeIds.3=6", "--set", "nexus.nodeIds.4=7")
	if !strings.HasPrefix(got, "id=6 peers= join=true ") {
		t.Errorf("replica 3 with a new id: got %s", got)
	}
	if !regexp.MustCompile(`^id=1 peers=1=.*,5=10\.0\.1\.4:8554/10\.0\.1\.4:8553 join= `).MatchString(run(t, "spike-nexus-0", "--values", fiveReplicaFile)) {
		t.Errorf("replica 0 of a 5-replica install does not found the cluster from 5 peers")
	}
}

func writeScript(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o755); err != nil {
		t.Fatal(err)
	}
}
