/*
 * vdierror.h - result codes of the SQL Server Virtual Device Interface (VDI),
 * Linux flavour, as provided by openvdi's libsqlvdi.so.
 *
 * Source-compatible with the vdierror.h of Microsoft's Linux VDI SDK: the same
 * names with the same values. Every code is an HRESULT of facility 0x77 with the
 * severity bit set, i.e. 0x8077xxxx, which a 32-bit int holds as a negative value.
 * Success is 0.
 *
 * Written for openvdi from the published description of these values.
 */
#ifndef VDIERROR_H_
#define VDIERROR_H_

#ifndef MAKE_HRESULT
#define MAKE_HRESULT(sev, fac, code) \
    ((int)(((unsigned int)(sev) << 31) | ((unsigned int)(fac) << 16) | ((unsigned int)(code))))
#endif

#define VD_ERROR(code) MAKE_HRESULT(1, 0x77, (code))

/* The object was not open. */
#define VD_E_NOTOPEN        VD_ERROR(2)  /* 0x80770002 */
/* The wait interval expired. */
#define VD_E_TIMEOUT        VD_ERROR(3)  /* 0x80770003 */
/* An abort is in effect; only termination calls are useful. */
#define VD_E_ABORT          VD_ERROR(4)  /* 0x80770004 */
/* The security environment could not be established. */
#define VD_E_SECURITY       VD_ERROR(5)  /* 0x80770005 */
/* An invalid parameter was passed. */
#define VD_E_INVALID        VD_ERROR(6)  /* 0x80770006 */
/* The SQL Server instance name was not recognised. */
#define VD_E_INSTANCE_NAME  VD_ERROR(7)  /* 0x80770007 */
/* The requested configuration is invalid or not supported. */
#define VD_E_NOTSUPPORTED   VD_ERROR(9)  /* 0x80770009 */
/* Out of memory. */
#define VD_E_MEMORY         VD_ERROR(10) /* 0x8077000A */
/* An unexpected internal error. */
#define VD_E_UNEXPECTED     VD_ERROR(11) /* 0x8077000B */
/* The call is not legal in the current state. */
#define VD_E_PROTOCOL       VD_ERROR(12) /* 0x8077000C */
/* All devices are open. */
#define VD_E_OPEN           VD_ERROR(13) /* 0x8077000D */
/* The object is now closed. */
#define VD_E_CLOSE          VD_ERROR(14) /* 0x8077000E */
/* The resource is busy. */
#define VD_E_BUSY           VD_ERROR(15) /* 0x8077000F */

#endif /* VDIERROR_H_ */
