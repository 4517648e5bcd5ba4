"""``DataKey``: a data key generated under a key, delivered in an owned Secret.

* create / resume / update: resolve ``spec.keyRef`` (absent: the namespace's default key, whose
  CustomerMasterKey object the operator creates), then make the owned Secret hold the data key:
  generated once, never again while the Secret keeps its ciphertext (a restart decrypts what is
  there instead); the ciphertext is re-encrypted when the key's current version moves on;
* a timer per DataKey compares ``status.keyVersion`` and the key's state with the key
  service's in-memory records and reconciles only on a difference (rotation, a key disabled,
  pending deletion or back), plus a full check now and then (a Secret deleted by hand). No
  Secret is listed or watched.
* deletion: the Secret carries a controller ownerReference, so Kubernetes' garbage collector
  removes it with the DataKey; no finalizer.

Before it resolves its key, a reconciliation tells the key service the namespace's UID
(:meth:`KeyService.observe_namespace`), so a key left by an earlier namespace of the same name
is never used. A blob in the Secret counts only if it names a key of the DataKey's own
namespace (any other is ``InvalidCiphertext``). Every data key generated, decrypted or
re-encrypted writes one audit line naming the DataKey before the result is used: if the line
cannot be written, the Secret is not written either (fail-closed).
The plaintext data key goes only into the Secret: never into a log line, Event, status or error.

Modules: :mod:`.handlers` (Kopf's edge), :mod:`.reconciling` (the synchronous step that calls
the key service), :mod:`.decisions` (reasons, status, what to announce), :mod:`.desired` (the
Secret as it must be), :mod:`.views` (the object as read), :mod:`.audit` (the operator's audit
lines), :mod:`.namespaces` (the namespace-UID cache).
"""

from . import handlers as handlers  # registers the Kopf handlers
