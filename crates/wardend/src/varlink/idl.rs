//! The interface descriptions `GetInterfaceDescription` returns. Text only: it must never
//! describe a method [`super::METHODS`] does not map, nor an error that is not a stable kind.

/// `io.warden`: each method is the daemon method of the same meaning (docs/PROTOCOL.md); the
/// records are the daemon's own answers, passed as `object` so this text cannot drift from them.
pub(crate) const IDL: &str = "# The warden privilege broker: the same calls, gate and identity rules as the
# warden socket (docs/PROTOCOL.md), without the hello handshake.
interface io.warden

# Records are the daemon's own answers (docs/PROTOCOL.md), passed as objects so this text
# cannot drift from them.
# The daemon's status answer.
method Status() -> (status: object)
# Who the kernel says is calling, and their tier on this socket.
method Whoami() -> (whoami: object)
# The actions the caller may see.
method ListActions() -> (actions: []object)
# Start an action; the answer is the job record.
method StartJob(action: string, params: ?object, idempotency_key: ?string) -> (job: object)
method GetJob(job_id: string) -> (job: object)
method WaitJob(job_id: string, timeout_ms: ?int) -> (job: object)
method CancelJob(job_id: string) -> (job: object)
# Up to 64 KiB of output from a byte offset; with follow and more: true, each chunk is a reply
# with continues: true.
method JobLogs(job_id: string, from: ?int, follow: ?bool) -> (job_id: string, from: int, next: int, data: string, truncated: bool, ended: bool)
# With more: true, each update of the job is a reply with continues: true, then the final record.
method WatchJob(job_id: string) -> (job: object)

error BadRequest (message: string, correlation_id: string)
error Forbidden (message: string, correlation_id: string)
error NotFound (message: string, correlation_id: string)
error Conflict (message: string, correlation_id: string)
error Busy (message: string, correlation_id: string, retry_after_ms: ?int)
error RateLimited (message: string, correlation_id: string, retry_after_ms: ?int)
error LockedDown (message: string, correlation_id: string)
error Cancelled (message: string, correlation_id: string)
error Unavailable (message: string, correlation_id: string)
error Internal (message: string, correlation_id: string, detail: ?string)
";

/// `org.varlink.service`, as the varlink specification gives it.
pub(crate) const SERVICE_IDL: &str =
    "# The Varlink Service Interface is provided by every varlink service.
interface org.varlink.service

method GetInfo() -> (
  vendor: string,
  product: string,
  version: string,
  url: string,
  interfaces: []string
)

method GetInterfaceDescription(interface: string) -> (description: string)

error InterfaceNotFound (interface: string)
error MethodNotFound (method: string)
error MethodNotImplemented (method: string)
error InvalidParameter (parameter: string)
error PermissionDenied ()
error ExpectedMore ()
";
