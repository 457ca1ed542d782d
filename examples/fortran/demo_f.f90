! demo_f.f90 - a small Fortran library with a C interface (bind(c)), used by
! the dllpool examples. Call it from ctypes like a C library (an argument
! without `value` is passed by reference: a pointer in C):
!   int    f_add(int a, int b)                         (arguments passed by value)
!   double f_sum(const double *values, int n)          (n passed by value)
!   int    f_pointer_size(void)                        (4 or 8)
!   void   f_scale(double *x, int n, double k)         (x scaled in place)
!   void   f_fill_squares(double *out, int n)          (an output array)
!   int    f_divmod(int a, int b, int *q, int *r)      (out-parameters)
!   int    f_upper(const char *s, char *out, int size) (text into the caller's buffer)
module demo_f
  use, intrinsic :: iso_c_binding, only: c_char, c_double, c_int, c_null_char, c_null_ptr, c_ptr, c_sizeof
  implicit none
  private
  public :: f_add, f_sum, f_pointer_size, f_scale, f_fill_squares, f_divmod, f_upper

contains

  function f_add(a, b) result(r) bind(c, name="f_add")
    integer(c_int), value, intent(in) :: a, b
    integer(c_int) :: r
    r = a + b
  end function f_add

  function f_sum(values, n) result(r) bind(c, name="f_sum")
    integer(c_int), value, intent(in) :: n
    real(c_double), intent(in) :: values(*)
    real(c_double) :: r
    if (n <= 0) then
      r = 0.0_c_double
    else
      r = sum(values(1:n))
    end if
  end function f_sum

  function f_pointer_size() result(r) bind(c, name="f_pointer_size")
    integer(c_int) :: r
    type(c_ptr) :: p
    p = c_null_ptr
    r = int(c_sizeof(p), c_int)
  end function f_pointer_size

  ! Multiplies x(1:n) by k in place.
  subroutine f_scale(x, n, k) bind(c, name="f_scale")
    integer(c_int), value, intent(in) :: n
    real(c_double), value, intent(in) :: k
    real(c_double), intent(inout) :: x(*)
    if (n > 0) x(1:n) = k * x(1:n)
  end subroutine f_scale

  ! An output array: out(i) = (i - 1)**2, the values C's out[i] = i * i gives.
  subroutine f_fill_squares(out, n) bind(c, name="f_fill_squares")
    integer(c_int), value, intent(in) :: n
    real(c_double), intent(out) :: out(*)
    integer :: i
    do i = 1, n
      out(i) = real(i - 1, c_double)**2
    end do
  end subroutine f_fill_squares

  ! Out-parameters: q = a / b and r = mod(a, b), truncated toward zero as in C.
  ! Returns 0, or -1 when b is 0 or the quotient overflows (-2**31 / -1);
  ! q and r are inout only so that a failed call leaves them as they were.
  function f_divmod(a, b, q, r) result(status) bind(c, name="f_divmod")
    integer(c_int), value, intent(in) :: a, b
    integer(c_int), intent(inout) :: q, r
    integer(c_int) :: status
    if (b == 0 .or. (a == -huge(a) - 1 .and. b == -1)) then
      status = -1
    else
      q = a / b
      r = mod(a, b)
      status = 0
    end if
  end function f_divmod

  ! Text into the caller's buffer: the ASCII upper-case copy of the NUL-terminated
  ! s, cut to size - 1 characters and NUL-terminated. Returns the length written
  ! (0 when out cannot hold even the NUL). Reads s no further than it copies.
  function f_upper(s, out, size) result(length) bind(c, name="f_upper")
    character(kind=c_char), intent(in) :: s(*)
    character(kind=c_char), intent(out) :: out(*)
    integer(c_int), value, intent(in) :: size
    integer(c_int) :: length
    character(kind=c_char) :: c
    length = 0
    if (size <= 0) return
    do while (length < size - 1)
      c = s(length + 1)
      if (c == c_null_char) exit
      if (c >= 'a' .and. c <= 'z') c = achar(iachar(c) - iachar('a') + iachar('A'), c_char)
      out(length + 1) = c
      length = length + 1
    end do
    out(length + 1) = c_null_char
  end function f_upper

end module demo_f
