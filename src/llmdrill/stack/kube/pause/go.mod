module llmdrill.local/pause

go 1.21
