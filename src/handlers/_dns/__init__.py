"""DNS: deliverability checks and RFC 6186 server discovery."""
