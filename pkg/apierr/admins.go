package apierr

// CodeLastAdmin: revoking this admin would leave no admin with a live
// credential (create another admin first).
const CodeLastAdmin = "last_admin"
