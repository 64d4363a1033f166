# Unit tests of the base policy (`soma policy test`): every rule named test_* must be true.
package soma.authz_test

import rego.v1

import data.soma.authz

rules := {"allowed_tools": ["*"], "memory_writes": true}

key(scopes) := {"kind": "api_key", "scopes": scopes}

test_write_needs_write_scope if {
	authz.decide({"action": "memory.write", "subject": key(["memory:write"]), "constitution": {"rules": rules}}, set()).allow
	not authz.decide({"action": "memory.write", "subject": key(["memory:read"]), "constitution": {"rules": rules}}, set()).allow
}

test_admin_grants_tenant_scopes if {
	authz.decide({"action": "memory.delete", "subject": key(["admin"]), "constitution": {"rules": rules}}, set()).allow
}

test_unknown_action_is_denied if {
	not authz.decide({"action": "launch.rockets", "subject": key(["admin"]), "constitution": {"rules": rules}}, set()).allow
}

test_constitution_can_stop_memory_writes if {
	d := authz.decide({"action": "memory.write", "subject": key(["admin"]), "constitution": {"rules": {"allowed_tools": ["*"], "memory_writes": false}}}, set())
	not d.allow
	count(d.reasons) == 1
	"memory writes are disabled by the constitution" in d.reasons
}

test_tenant_denial_wins if {
	d := authz.decide({"action": "memory.write", "subject": key(["admin"]), "constitution": {"rules": rules}}, {"read-only tenant"})
	not d.allow
	count(d.reasons) == 1
	"read-only tenant" in d.reasons
}

test_session_tool_allow_list if {
	session := {"kind": "session", "scopes": ["agent:run"], "allow": {"tools": ["search"]}}
	authz.decide({"action": "tool.call", "subject": session, "resource": {"tool": "search"}, "constitution": {"rules": rules}}, set()).allow
	not authz.decide({"action": "tool.call", "subject": session, "resource": {"tool": "shell"}, "constitution": {"rules": rules}}, set()).allow
}

test_constitution_tool_list if {
	only := {"allowed_tools": ["search"], "memory_writes": true}
	not authz.decide({"action": "tool.call", "subject": key(["admin"]), "resource": {"tool": "shell"}, "constitution": {"rules": only}}, set()).allow
}
