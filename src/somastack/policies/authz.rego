# The platform's base policy. Deny by default: an action is allowed only when a scope the subject
# holds grants it and nothing denies it. A tenant's override (package soma.tenant) can only add
# denials (its `deny` set), never grant.
package soma.authz

import rego.v1

required_scope := {
	"memory.read": "memory:read",
	"memory.write": "memory:write",
	"memory.delete": "memory:write",
	"tool.call": "agent:run",
}

has_scope(subject, scope) if scope in subject.scopes

has_scope(subject, scope) if {
	"admin" in subject.scopes
	scope != "platform:admin"
}

has_scope(subject, _) if "platform:admin" in subject.scopes

granted(inp) if has_scope(inp.subject, required_scope[inp.action])

constitution_denials(inp) := {"memory writes are disabled by the constitution" |
	inp.action in {"memory.write", "memory.delete"}
	inp.constitution.rules.memory_writes == false
}

tool_allowed_by_constitution(inp) if "*" in inp.constitution.rules.allowed_tools

tool_allowed_by_constitution(inp) if inp.resource.tool in inp.constitution.rules.allowed_tools

tool_denials(inp) := {msg |
	inp.action == "tool.call"
	not tool_allowed_by_constitution(inp)
	msg := sprintf("tool %v is not allowed by the constitution", [inp.resource.tool])
}

session_denials(inp) := {msg |
	inp.action == "tool.call"
	inp.subject.kind == "session"
	not inp.resource.tool in inp.subject.allow.tools
	msg := sprintf("tool %v is not in the session's allow-list", [inp.resource.tool])
}

denials(inp, extra) := ((constitution_denials(inp) | tool_denials(inp)) | session_denials(inp)) | extra

decide(inp, extra) := {"allow": true, "reasons": [sprintf("granted by scope %v", [required_scope[inp.action]])]} if {
	granted(inp)
	count(denials(inp, extra)) == 0
}

decide(inp, extra) := {"allow": false, "reasons": sort(denials(inp, extra))} if {
	count(denials(inp, extra)) > 0
}

decide(inp, extra) := {"allow": false, "reasons": [sprintf("no scope the caller holds grants %v", [inp.action])]} if {
	not granted(inp)
	count(denials(inp, extra)) == 0
}

tenant_denials := {msg | some msg in data.soma.tenant.deny}

decision := decide(input, tenant_denials)
